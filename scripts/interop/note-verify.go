// Command note-verify checks assent's signed checkpoints and proofs with Go's implementation
// of signed notes and transparency logs (golang.org/x/mod/sumdb/note and sumdb/tlog), which
// shares no code with assent or with scripts/verify-audit-offline.py:
//
//	note-verify NOTE_FILE VERIFIER_KEY
//	note-verify NOTE_FILE VERIFIER_KEY --consistency OLD_NOTE_FILE PROOF.json
//	note-verify NOTE_FILE VERIFIER_KEY --inclusion EXPORT.json
//
// The first form opens the note with the key (note.Open: the syntax, the key id, the Ed25519
// signature) and prints its text, read as a tlog-checkpoint when it is one. --consistency also opens the older checkpoint
// and checks the RFC 6962 consistency proof between the two with tlog.CheckTree. --inclusion
// checks every event of a subject export with tlog.CheckRecord, from a leaf hash computed
// here from the event's fields (docs/audit.md). VERIFIER_KEY is the key text or a file
// holding it. Exit status: 0 verified, 1 a check failed, 2 usage or format error.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

func fail(status int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(status)
}

func readFile(path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		fail(2, "error: %v", err)
	}
	return data
}

// openNote verifies the note's signature by the key and returns its text.
func openNote(path string, verifier note.Verifier) string {
	n, err := note.Open(readFile(path), note.VerifierList(verifier))
	if err != nil {
		fail(1, "FAILED %s: %v", path, err)
	}
	return n.Text
}

// parseCheckpoint reads a tlog-checkpoint text: origin, size, base64 root (then extensions).
func parseCheckpoint(text string) (checkpoint, error) {
	lines := strings.Split(text, "\n")
	if len(lines) < 4 {
		return checkpoint{}, fmt.Errorf("not a checkpoint (origin, size, root)")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return checkpoint{}, fmt.Errorf("tree size %q", lines[1])
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return checkpoint{}, fmt.Errorf("root %q", lines[2])
	}
	var hash tlog.Hash
	copy(hash[:], root)
	return checkpoint{origin: lines[0], size: size, root: hash}, nil
}

// openCheckpoint verifies the note and reads its checkpoint, whose origin is the key name.
func openCheckpoint(path string, verifier note.Verifier) checkpoint {
	parsed, err := parseCheckpoint(openNote(path, verifier))
	if err != nil {
		fail(2, "error: %s: %v", path, err)
	}
	if parsed.origin != verifier.Name() {
		fail(1, "FAILED %s: origin %q is not the key name %q", path, parsed.origin, verifier.Name())
	}
	fmt.Printf("ok: %s signed by %s+%08x: origin %s, size %d, root %x\n",
		path, verifier.Name(), verifier.KeyHash(), parsed.origin, parsed.size, parsed.root[:])
	return parsed
}

func decodeHashes(values []string) []tlog.Hash {
	hashes := make([]tlog.Hash, len(values))
	for i, value := range values {
		raw, err := hex.DecodeString(value)
		if err != nil || len(raw) != tlog.HashSize {
			fail(2, "error: proof hash %q", value)
		}
		copy(hashes[i][:], raw)
	}
	return hashes
}

// jsonString writes s as serde_json does: only '"', '\' and U+0000-U+001F escaped (Go's
// encoding/json would also escape <, >, & and U+2028/U+2029).
func jsonString(buffer *bytes.Buffer, s string) {
	buffer.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			buffer.WriteString(`\"`)
		case '\\':
			buffer.WriteString(`\\`)
		case '\b':
			buffer.WriteString(`\b`)
		case '\t':
			buffer.WriteString(`\t`)
		case '\n':
			buffer.WriteString(`\n`)
		case '\f':
			buffer.WriteString(`\f`)
		case '\r':
			buffer.WriteString(`\r`)
		default:
			if r < 0x20 {
				fmt.Fprintf(buffer, `\u%04x`, r)
			} else {
				buffer.WriteRune(r)
			}
		}
	}
	buffer.WriteByte('"')
}

type exportedEvent struct {
	Sequence       int64    `json:"sequence"`
	EventID        string   `json:"event_id"`
	AtMicros       int64    `json:"at_micros"`
	SubjectID      string   `json:"subject_id"`
	Kind           string   `json:"kind"`
	Caller         string   `json:"caller"`
	OperatorID     string   `json:"operator_id"`
	ActorReason    string   `json:"actor_reason"`
	PayloadSHA256  string   `json:"payload_sha256"`
	PolicyVersion  string   `json:"policy_version"`
	TraceID        string   `json:"trace_id"`
	LeafIndex      int64    `json:"leaf_index"`
	InclusionProof []string `json:"inclusion_proof"`
}

// leafData is the compact JSON array of docs/audit.md "Leaf, payload, chain".
func (e exportedEvent) leafData() []byte {
	var buffer bytes.Buffer
	fmt.Fprintf(&buffer, "[%d,", e.Sequence)
	jsonString(&buffer, e.EventID)
	fmt.Fprintf(&buffer, ",%d", e.AtMicros)
	for _, field := range []string{e.SubjectID, e.Kind, e.Caller, e.OperatorID, e.ActorReason,
		e.PayloadSHA256, e.PolicyVersion, e.TraceID} {
		buffer.WriteByte(',')
		jsonString(&buffer, field)
	}
	buffer.WriteByte(']')
	return buffer.Bytes()
}

func main() {
	args := os.Args[1:]
	if len(args) != 2 && !(len(args) == 4 && args[2] == "--inclusion") &&
		!(len(args) == 5 && args[2] == "--consistency") {
		fail(2, "usage: note-verify NOTE_FILE VERIFIER_KEY [--consistency OLD_NOTE_FILE PROOF.json | --inclusion EXPORT.json]")
	}
	key := args[1]
	if data, err := os.ReadFile(key); err == nil {
		key = strings.TrimSpace(string(data))
	}
	verifier, err := note.NewVerifier(key)
	if err != nil {
		fail(2, "error: verifier key: %v", err)
	}
	if len(args) == 2 {
		text := openNote(args[0], verifier)
		if parsed, err := parseCheckpoint(text); err == nil && parsed.origin == verifier.Name() {
			fmt.Printf("ok: %s signed by %s+%08x: origin %s, size %d, root %x\n",
				args[0], verifier.Name(), verifier.KeyHash(), parsed.origin, parsed.size, parsed.root[:])
		} else {
			fmt.Printf("ok: %s signed by %s+%08x; its text:\n%s", args[0], verifier.Name(), verifier.KeyHash(), text)
		}
		return
	}
	latest := openCheckpoint(args[0], verifier)

	switch {
	case len(args) == 5:
		old := openCheckpoint(args[3], verifier)
		var proof struct {
			OldSize int64    `json:"old_size"`
			NewSize int64    `json:"new_size"`
			Hashes  []string `json:"hashes"`
		}
		if err := json.Unmarshal(readFile(args[4]), &proof); err != nil {
			fail(2, "error: %s: %v", args[4], err)
		}
		if proof.OldSize != old.size || proof.NewSize != latest.size {
			fail(1, "FAILED consistency: the proof is for %d -> %d, the checkpoints are %d -> %d",
				proof.OldSize, proof.NewSize, old.size, latest.size)
		}
		if err := tlog.CheckTree(decodeHashes(proof.Hashes), latest.size, latest.root, old.size, old.root); err != nil {
			fail(1, "FAILED consistency %d -> %d: %v", old.size, latest.size, err)
		}
		fmt.Printf("ok: tlog.CheckTree: the tree of size %d extends the tree of size %d\n", latest.size, old.size)
	case len(args) == 4:
		var export struct {
			Checkpoint string          `json:"checkpoint"`
			Events     []exportedEvent `json:"events"`
		}
		if err := json.Unmarshal(readFile(args[3]), &export); err != nil {
			fail(2, "error: %s: %v", args[3], err)
		}
		if export.Checkpoint != string(readFile(args[0])) {
			fail(1, "FAILED %s: its checkpoint is not the note %s", args[3], args[0])
		}
		for _, event := range export.Events {
			leaf := tlog.RecordHash(event.leafData()) // SHA-256(0x00 || data): RFC 6962's leaf hash
			if event.LeafIndex != event.Sequence-1 {
				fail(1, "FAILED sequence %d (event %s): leaf_index %d", event.Sequence, event.EventID, event.LeafIndex)
			}
			proof := tlog.RecordProof(decodeHashes(event.InclusionProof))
			if err := tlog.CheckRecord(proof, latest.size, latest.root, event.LeafIndex, leaf); err != nil {
				fail(1, "FAILED sequence %d (event %s): inclusion: %v", event.Sequence, event.EventID, err)
			}
		}
		fmt.Printf("ok: tlog.CheckRecord: %d events of %s included in the tree of size %d\n",
			len(export.Events), args[3], latest.size)
	}
}
