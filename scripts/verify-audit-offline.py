#!/usr/bin/env python3
"""Verifies assent's audit log offline: no server, no database, no packages beyond Python 3.

    verify-audit-offline.py export EXPORT.json --key VERIFIER_KEY
    verify-audit-offline.py dump EVENTS.jsonl --checkpoint NOTE_FILE --key VERIFIER_KEY
    verify-audit-offline.py consistency OLD_NOTE NEW_NOTE PROOF.json --key VERIFIER_KEY
    verify-audit-offline.py checkpoint NOTE_FILE --key VERIFIER_KEY
    verify-audit-offline.py selftest
    verify-audit-offline.py sample DIR

VERIFIER_KEY is the key text (`<name>+<hex key id>+<base64(0x01 || public key)>`) or a file
holding it. Written from the specifications, not from assent's code, so that it is a second
implementation of every format docs/audit.md defines:

- C2SP signed-note (c2sp.org/signed-note) and tlog-checkpoint (c2sp.org/tlog-checkpoint);
- Ed25519 verification and key generation from RFC 8032 (sections 5.1.5, 5.1.7 and the
  section 6 reference code), in pure Python: slow, but a run checks a handful of signatures;
- RFC 6962 / RFC 9162 Merkle tree hashing (2.1.1), inclusion (2.1.3) and consistency (2.1.4)
  proofs;
- assent's leaf data, payload commitments and hash chain (docs/audit.md).

Exit status: 0 verified, 1 a check failed (each failure is printed, naming the event's sequence
and id and the check), 2 usage or format error. `sample` writes the self-test's signed synthetic log
(checkpoints, dump, exports, a consistency proof, the verifier key) for checking with another
implementation (scripts/interop-check).
"""

import base64
import hashlib
import json
import os
import re
import sys
import tempfile
import time

EXIT_VERIFIED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

GENESIS_HASH = "0" * 64
SUBJECT_EXPORT_FORMAT = "assent-subject-export/1"
PAYLOAD_ERASED_KIND = "payload_erased"


class FormatError(Exception):
    """The input is not in the documented format (exit status 2)."""


# --- Ed25519 (RFC 8032) --------------------------------------------------------------------
# Points are in extended homogeneous coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z,
# as in the reference code of RFC 8032 section 6.

ED_P = 2**255 - 19
ED_L = 2**252 + 27742317777372353535851937790883648493  # the group order, "L" in 5.1
ED_D = -121665 * pow(121666, ED_P - 2, ED_P) % ED_P
ED_SQRT_M1 = pow(2, (ED_P - 1) // 4, ED_P)


def _ed_add(p, q):
    a = (p[1] - p[0]) * (q[1] - q[0]) % ED_P
    b = (p[1] + p[0]) * (q[1] + q[0]) % ED_P
    c = 2 * p[3] * q[3] * ED_D % ED_P
    d = 2 * p[2] * q[2] % ED_P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % ED_P, g * h % ED_P, f * g % ED_P, e * h % ED_P)


def _ed_multiply(scalar, point):
    result = (0, 1, 1, 0)  # the neutral element
    while scalar > 0:
        if scalar & 1:
            result = _ed_add(result, point)
        point = _ed_add(point, point)
        scalar >>= 1
    return result


def _ed_equal(p, q):
    return (p[0] * q[2] - q[0] * p[2]) % ED_P == 0 and (p[1] * q[2] - q[1] * p[2]) % ED_P == 0


def _ed_recover_x(y, sign):
    """x from y and the sign bit (5.1.3 steps 2-4); None when there is none."""
    if y >= ED_P:
        return None
    x2 = (y * y - 1) * pow(ED_D * y * y + 1, ED_P - 2, ED_P) % ED_P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (ED_P + 3) // 8, ED_P)
    if (x * x - x2) % ED_P != 0:
        x = x * ED_SQRT_M1 % ED_P
    if (x * x - x2) % ED_P != 0:
        return None
    if (x & 1) != sign:
        x = ED_P - x
    return x


_ED_BASE_Y = 4 * pow(5, ED_P - 2, ED_P) % ED_P
_ED_BASE_X = _ed_recover_x(_ED_BASE_Y, 0)
ED_BASE = (_ED_BASE_X, _ED_BASE_Y, 1, _ED_BASE_X * _ED_BASE_Y % ED_P)


def _ed_compress(point):
    z_inverse = pow(point[2], ED_P - 2, ED_P)
    x = point[0] * z_inverse % ED_P
    y = point[1] * z_inverse % ED_P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


def _ed_decompress(encoded):
    """5.1.3: None if the 32 bytes are not a point's encoding."""
    if len(encoded) != 32:
        return None
    y = int.from_bytes(encoded, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _ed_recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % ED_P)


def _sha512_scalar(data):
    return int.from_bytes(hashlib.sha512(data).digest(), "little") % ED_L


def _ed_expand_seed(seed):
    """5.1.5 steps 1-2: the secret scalar s (pruned) and the prefix used for signing."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    digest = hashlib.sha512(seed).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    return scalar, digest[32:]


def ed25519_public_key(seed):
    """5.1.5: the public key of a 32-byte private key (seed)."""
    scalar, _ = _ed_expand_seed(seed)
    return _ed_compress(_ed_multiply(scalar, ED_BASE))


def ed25519_sign(seed, message):
    """5.1.6. Used by the self-test, to build signed logs and check determinism."""
    scalar, prefix = _ed_expand_seed(seed)
    public = _ed_compress(_ed_multiply(scalar, ED_BASE))
    r = _sha512_scalar(prefix + message)
    encoded_r = _ed_compress(_ed_multiply(r, ED_BASE))
    k = _sha512_scalar(encoded_r + public + message)
    s = (r + k * scalar) % ED_L
    return encoded_r + int.to_bytes(s, 32, "little")


def ed25519_verify(public, message, signature):
    """5.1.7: [S]B = R + [k]A, with A and R decoded (5.1.3) and S < L."""
    if len(public) != 32 or len(signature) != 64:
        return False
    point_a = _ed_decompress(public)
    if point_a is None:
        return False
    encoded_r = signature[:32]
    point_r = _ed_decompress(encoded_r)
    if point_r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= ED_L:
        return False
    k = _sha512_scalar(encoded_r + public + message)
    return _ed_equal(_ed_multiply(s, ED_BASE), _ed_add(point_r, _ed_multiply(k, point_a)))


# --- Signed notes (c2sp.org/signed-note) ----------------------------------------------------

SIGNATURE_TYPE_ED25519 = 0x01
SIGNATURE_LINE_PREFIX = "\u2014 "  # em dash, space
MAX_SIGNATURES = 100


def strict_base64(text, what):
    """Standard base64 with padding (RFC 4648 section 4), in its one canonical spelling."""
    try:
        decoded = base64.b64decode(text, validate=True)
    except ValueError:
        raise FormatError(f"{what}: not standard base64") from None
    if base64.b64encode(decoded).decode("ascii") != text:
        raise FormatError(f"{what}: not canonical padded base64")
    return decoded


def valid_key_name(name):
    """Non-empty, no Unicode space, no '+' (signed-note "Signatures")."""
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name)


def key_id(name, public):
    """SHA-256(key name || 0x0A || signature type || public key)[:4]."""
    material = name.encode("utf-8") + b"\n" + bytes([SIGNATURE_TYPE_ED25519]) + public
    return hashlib.sha256(material).digest()[:4]


class VerifierKey:
    """`<name>+<hex8 key id>+<base64(0x01 || 32-byte Ed25519 public key)>`."""

    def __init__(self, text):
        text = text.strip()
        parts = text.split("+", 2)  # base64 may hold '+' too
        if len(parts) != 3:
            raise FormatError("verifier key: expected <name>+<hex key id>+<base64 key>")
        name, id_hex, key_b64 = parts
        if not valid_key_name(name):
            raise FormatError("verifier key: invalid key name")
        if not re.fullmatch(r"[0-9a-f]{8}", id_hex):
            raise FormatError("verifier key: key id is not 8 lower-case hex digits")
        material = strict_base64(key_b64, "verifier key")
        if len(material) != 33 or material[0] != SIGNATURE_TYPE_ED25519:
            raise FormatError("verifier key: not an Ed25519 key (0x01 || 32 bytes)")
        self.name = name
        self.public = material[1:]
        self.key_id = bytes.fromhex(id_hex)
        if key_id(name, self.public) != self.key_id:
            raise FormatError(f"verifier key: key id {id_hex} is not the hash of the name and key")
        self.text = text

    def __str__(self):
        return self.text


def verifier_key_text(name, public):
    encoded = base64.b64encode(bytes([SIGNATURE_TYPE_ED25519]) + public).decode("ascii")
    return f"{name}+{key_id(name, public).hex()}+{encoded}"


def parse_signer_key(text):
    """`PRIVATE+KEY+<name>+<hex8 key id>+<base64(0x01 || 32-byte seed)>` -> (name, seed)."""
    parts = text.strip().split("+", 4)  # base64 may hold '+' too
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise FormatError("signer key: expected PRIVATE+KEY+<name>+<hex key id>+<base64 key>")
    name, id_hex, key_b64 = parts[2:]
    material = strict_base64(key_b64, "signer key")
    if not valid_key_name(name) or len(material) != 33 or material[0] != SIGNATURE_TYPE_ED25519:
        raise FormatError("signer key: not an Ed25519 signer key")
    seed = material[1:]
    if key_id(name, ed25519_public_key(seed)).hex() != id_hex:
        raise FormatError("signer key: key id does not match the key")
    return name, seed


def sign_note(text, name, seed):
    """The signed note of `text` (ending in a newline) with one signature. Self-test only."""
    signature = ed25519_sign(seed, text.encode("utf-8"))
    encoded = base64.b64encode(key_id(name, ed25519_public_key(seed)) + signature).decode("ascii")
    return f"{text}\n{SIGNATURE_LINE_PREFIX}{name} {encoded}\n"


def open_note(note, key):
    """Checks the note's syntax and its signature by `key`; returns its text.

    Raises FormatError for a malformed note and VerificationError when no signature by the
    key is present or one does not verify (signatures by other keys are ignored).
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("note: not valid UTF-8") from None
    if any(ord(ch) < 0x20 and ch != "\n" for ch in note):
        raise FormatError("note: contains an ASCII control character other than newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise FormatError("note: no blank line between the text and the signatures")
    text, signature_block = note[: split + 1], note[split + 2 :]
    if not signature_block.endswith("\n"):
        raise FormatError("note: the signatures do not end with a newline")
    lines = signature_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise FormatError("note: more than 100 signatures")
    matching = []
    for line in lines:
        if not line.startswith(SIGNATURE_LINE_PREFIX):
            raise FormatError("note: a signature line does not start with an em dash and a space")
        fields = line[len(SIGNATURE_LINE_PREFIX) :].split(" ")
        if len(fields) != 2 or not valid_key_name(fields[0]):
            raise FormatError("note: malformed signature line")
        signature = strict_base64(fields[1], "note signature")
        if len(signature) < 5:
            raise FormatError("note: signature shorter than a key id")
        if fields[0] == key.name and signature[:4] == key.key_id:
            matching.append(signature[4:])
    if not matching:
        raise VerificationError(f"note: no signature by key {key.name}+{key.key_id.hex()}")
    for signature in matching:
        if not ed25519_verify(key.public, text.encode("utf-8"), signature):
            raise VerificationError(f"note: the signature by {key.name} does not verify")
    return text


def parse_checkpoint_text(text):
    """c2sp.org/tlog-checkpoint: origin, size, base64 root, then optional extension lines."""
    lines = text.split("\n")
    if lines[-1] != "" or len(lines) < 4:
        raise FormatError("checkpoint: fewer than three lines")
    origin, size_text, root_text = lines[:3]
    if not origin:
        raise FormatError("checkpoint: empty origin")
    if not re.fullmatch(r"0|[1-9][0-9]*", size_text) or int(size_text) >= 2**64:
        raise FormatError("checkpoint: tree size is not a decimal number without leading zeros")
    root = strict_base64(root_text, "checkpoint root")
    if len(root) != 32:
        raise FormatError("checkpoint: root hash is not 32 bytes")
    if any(line == "" for line in lines[3:-1]):
        raise FormatError("checkpoint: empty extension line")
    return origin, int(size_text), root


def verify_checkpoint(note, key):
    """The checkpoint's (origin, size, root) once its signature by `key` verifies."""
    origin, size, root = parse_checkpoint_text(open_note(note, key))
    if origin != key.name:
        raise VerificationError(f"checkpoint: origin {origin!r} is not the key's name {key.name!r}")
    return origin, size, root


class VerificationError(Exception):
    """A check failed (exit status 1)."""


# --- RFC 6962 / RFC 9162 Merkle trees -------------------------------------------------------

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n):
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def reference_root(leaves):
    """MTH (RFC 9162 2.1.1) over leaf hashes, by its recursive definition."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(reference_root(leaves[:k]), reference_root(leaves[k:]))


def reference_inclusion_path(m, leaves):
    """PATH(m, D[n]) (RFC 9162 2.1.3.1)."""
    n = len(leaves)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return reference_inclusion_path(m, leaves[:k]) + [reference_root(leaves[k:])]
    return reference_inclusion_path(m - k, leaves[k:]) + [reference_root(leaves[:k])]


def reference_consistency_proof(m, leaves):
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (RFC 9162 2.1.4.1)."""

    def subproof(m, nodes, complete):
        n = len(nodes)
        if m == n:
            return [] if complete else [reference_root(nodes)]
        k = _split(n)
        if m <= k:
            return subproof(m, nodes[:k], complete) + [reference_root(nodes[k:])]
        return subproof(m - k, nodes[k:], False) + [reference_root(nodes[:k])]

    return subproof(m, leaves, True)


def verify_inclusion(leaf_index, tree_size, leaf, proof, root):
    """RFC 9162 2.1.3.2."""
    if not 0 <= leaf_index < tree_size or any(len(p) != 32 for p in proof):
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size, new_size, old_root, new_root, proof):
    """RFC 9162 2.1.4.2, with the trivial cases: equal sizes (empty proof, equal roots) and an
    empty old tree (empty proof, the empty root)."""
    if any(len(p) != 32 for p in proof) or not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


class Frontier:
    """The peaks of a growing tree (perfect subtrees, largest first): MTH in O(n) for a dump."""

    def __init__(self):
        self.size = 0
        self.peaks = []  # (number of leaves, hash)

    def push(self, leaf):
        self.size += 1
        self.peaks.append((1, leaf))
        while len(self.peaks) > 1 and self.peaks[-1][0] == self.peaks[-2][0]:
            (count, right), (_, left) = self.peaks.pop(), self.peaks.pop()
            self.peaks.append((2 * count, node_hash(left, right)))

    def root(self):
        if not self.peaks:
            return EMPTY_ROOT
        root = self.peaks[-1][1]
        for _, peak in reversed(self.peaks[:-1]):
            root = node_hash(peak, root)
        return root


# --- Events: leaf data, payload commitment, chain ------------------------------------------

_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')
_SHORT_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r",
}  # fmt: skip


def _escape(match):
    ch = match.group(0)
    return _SHORT_ESCAPES.get(ch) or "\\u%04x" % ord(ch)


def json_string(value):
    """A JSON string as serde_json writes it: only `"`, `\\` and U+0000-U+001F are escaped
    (\\b \\t \\n \\f \\r, else \\u00xx in lower-case hex); everything else, DEL and U+2028
    included, is written as it is."""
    return '"' + _NEEDS_ESCAPE.sub(_escape, value) + '"'


def compact_array(fields):
    """serde_json's compact array of integers and strings, as UTF-8."""
    parts = [str(f) if isinstance(f, int) else json_string(f) for f in fields]
    try:
        return ("[" + ",".join(parts) + "]").encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError("a string holds a lone surrogate, which no event can contain") from None


EVENT_STRING_FIELDS = (
    "event_id", "subject_id", "kind", "caller", "operator_id", "actor_reason",
    "payload_sha256", "policy_version", "trace_id", "prev_hash", "hash",
)  # fmt: skip


class Event:
    """One event object of an export or dump (docs/audit.md "Export and dump formats")."""

    def __init__(self, obj):
        if not isinstance(obj, dict):
            raise FormatError("an event is not a JSON object")
        for name in ("sequence", "at_micros"):
            if not isinstance(obj.get(name), int) or isinstance(obj.get(name), bool):
                raise FormatError(f"event: {name} is not an integer")
        for name in EVENT_STRING_FIELDS:
            if not isinstance(obj.get(name), str):
                raise FormatError(f"event {obj['sequence']}: {name} is not a string")
        for name in ("detail_json", "payload_salt"):
            if name not in obj or not isinstance(obj[name], (str, type(None))):
                raise FormatError(f"event {obj['sequence']}: {name} is not a string or null")
        for name, value in obj.items():
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    message = f"event {obj['sequence']}: {name} holds a lone surrogate"
                    raise FormatError(message) from None
        self.obj = obj
        self.sequence = obj["sequence"]
        if self.sequence < 1:
            raise FormatError(f"event {self.sequence}: sequence is not positive")
        self.detail = obj["detail_json"]
        self.salt = obj["payload_salt"]

    def __getitem__(self, name):
        return self.obj[name]

    @property
    def label(self):
        return f"sequence {self.sequence} (event {self.obj['event_id']})"

    @property
    def erased(self):
        return self.detail is None

    def _fields(self, middle):
        o = self.obj
        return [
            o["sequence"], o["event_id"], o["at_micros"], o["subject_id"], o["kind"], o["caller"],
            o["operator_id"], o["actor_reason"], middle, o["policy_version"], o["trace_id"],
        ]  # fmt: skip

    def leaf_data(self):
        """The leaf data: the fields with the payload's commitment in place of the detail."""
        return compact_array(self._fields(self.obj["payload_sha256"]))

    def v1_canonical_bytes(self):
        """The canonical bytes of events chained before payloads were committed (v1)."""
        return compact_array(self._fields(self.detail))

    def check(self):
        """The checks one event allows on its own; returns failed checks (strings)."""
        failures = []
        revision = self.obj.get("revision")
        if revision is not None and revision != f"r1.{self.sequence:x}":
            failures.append(f"revision {revision!r} is not r1.<hex of the sequence>")
        if self.erased:
            if self.salt is not None:
                failures.append("payload: salt present but detail_json null")
        else:
            if self.salt is None or not re.fullmatch(r"([0-9a-fA-F]{2})*", self.salt):
                failures.append("payload: detail_json present but payload_salt null or not hex")
            else:
                committed = bytes.fromhex(self.salt) + self.detail.encode("utf-8")
                digest = hashlib.sha256(committed).hexdigest()
                if digest != self.obj["payload_sha256"]:
                    failures.append("payload: SHA-256(salt || detail_json) is not payload_sha256")
        failures.extend(self.check_hash())
        return failures

    def check_hash(self):
        """hash = hex(SHA-256(prev_hash || leaf data)) (v2), or over the v1 canonical bytes
        when the payload is present."""
        prev = self.obj["prev_hash"].encode("utf-8")
        if hashlib.sha256(prev + self.leaf_data()).hexdigest() == self.obj["hash"]:
            return []
        if self.erased:
            return ["chain: hash is not the v2 hash (and with the payload erased, v1 cannot apply)"]
        if hashlib.sha256(prev + self.v1_canonical_bytes()).hexdigest() == self.obj["hash"]:
            return []
        return ["chain: hash is neither the v2 nor the v1 hash of the event"]


class ErasureLedger:
    """Every erased payload must be named by a `payload_erased` event of the same subject that
    follows it, and every payload such an event names must be gone. An erasure event whose own
    payload was erased later names nothing that can be read; erased events it may cover are
    then counted as such, not failed."""

    def __init__(self):
        self.named = {}  # sequence -> (erasure sequence, subject)
        self.erased = {}  # sequence -> (label, subject)
        self.unreadable_erasures = []  # (sequence, subject) of erased payload_erased events
        self.failures = []

    def add(self, event):
        if event.erased:
            self.erased[event.sequence] = (event.label, event["subject_id"])
            if event["kind"] == PAYLOAD_ERASED_KIND:
                self.unreadable_erasures.append((event.sequence, event["subject_id"]))
        elif event["kind"] == PAYLOAD_ERASED_KIND:
            try:
                named = json.loads(event.detail)["erased"]
                if not isinstance(named, list) or not all(type(s) is int for s in named):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self.failures.append(f'{event.label}: payload_erased detail is not {{"erased": [...]}}')
                return
            for sequence in named:
                if sequence >= event.sequence:
                    self.failures.append(f"{event.label}: erasure names a later sequence {sequence}")
                self.named.setdefault(sequence, (event.sequence, event["subject_id"]))

    def finish(self, present):
        """(failures, number of erased payloads covered only by an unreadable erasure).
        `present(sequence)`: whether the input holds that event (then its payload must be gone
        if an erasure names it)."""
        failures, uncertain = list(self.failures), 0
        for sequence, (erasure, _) in sorted(self.named.items()):
            if sequence not in self.erased and present(sequence):
                failures.append(f"sequence {sequence}: payload: still present, but erased by {erasure}")
        for sequence, (label, subject) in sorted(self.erased.items()):
            if sequence in self.named:
                if self.named[sequence][1] != subject:
                    failures.append(f"{label}: payload erased by an event of another subject")
            elif any(s > sequence and who == subject for s, who in self.unreadable_erasures):
                uncertain += 1
            else:
                failures.append(f"{label}: payload missing and no payload_erased event names it")
        return failures, uncertain


# --- Commands -------------------------------------------------------------------------------


def load_key(argument):
    if os.path.isfile(argument):
        with open(argument, encoding="utf-8") as handle:
            argument = handle.read()
    return VerifierKey(argument)


def decode_hashes(values, what):
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise FormatError(f"{what}: not a list of hex strings")
    try:
        hashes = [bytes.fromhex(v) for v in values]
    except ValueError:
        raise FormatError(f"{what}: not hex") from None
    if any(len(h) != 32 for h in hashes):
        raise FormatError(f"{what}: a hash is not 32 bytes")
    return hashes


UNCERTAIN_ERASURES = "note: {} erased payload(s) covered only by an erasure whose own payload is erased"


def checkpoint_label(origin, size, root):
    return f"checkpoint {origin} size {size} root {root.hex()}"


def verify_export(document, key):
    """A subject export: (failures, summary)."""
    if not isinstance(document, dict) or document.get("format") != SUBJECT_EXPORT_FORMAT:
        raise FormatError(f"export: format is not {SUBJECT_EXPORT_FORMAT}")
    if not isinstance(document.get("checkpoint"), str) or not isinstance(document.get("events"), list):
        raise FormatError("export: checkpoint (a note) or events (a list) missing")
    subject = document.get("subject_id")
    notes = []
    if document.get("verifier_key") != key.text:
        named = document.get("verifier_key")
        notes.append(f"note: the export names verifier key {named!r}; checked against {key}")
    try:
        origin, size, root = verify_checkpoint(document["checkpoint"], key)
    except VerificationError as error:
        return [f"checkpoint: {error}"], ""
    failures, ledger, previous = [], ErasureLedger(), None
    for obj in document["events"]:
        event = Event(obj)
        failed = [f"{event.label}: {f}" for f in event.check()]
        if event["subject_id"] != subject:
            failed.append(f"{event.label}: subject_id {event['subject_id']!r} is not the export's")
        if previous is not None and event.sequence <= previous.sequence:
            raise FormatError(f"export: {event.label} is not after sequence {previous.sequence}")
        follows = previous is not None and event.sequence == previous.sequence + 1
        if follows and event["prev_hash"] != previous["hash"]:
            failed.append(f"{event.label}: chain: prev_hash is not sequence {previous.sequence}'s hash")
        if obj.get("leaf_index") != event.sequence - 1:
            failed.append(f"{event.label}: leaf_index is not sequence - 1")
        proof = decode_hashes(obj.get("inclusion_proof"), f"export: {event.label} inclusion_proof")
        leaf = leaf_hash(event.leaf_data())
        if "leaf_hash" in obj and obj["leaf_hash"] != leaf.hex():
            failed.append(f"{event.label}: leaf_hash is not the hash of the leaf data")
        if event.sequence > size:
            failed.append(f"{event.label}: inclusion: not in the checkpoint's tree of size {size}")
        elif not verify_inclusion(event.sequence - 1, size, leaf, proof, root):
            failed.append(f"{event.label}: inclusion: the proof does not lead to the checkpoint's root")
        ledger.add(event)
        failures.extend(failed)
        previous = event
    exported = {e["sequence"] for e in document["events"]}
    erasure_failures, uncertain = ledger.finish(lambda sequence: sequence in exported)
    failures.extend(erasure_failures)
    if uncertain:
        notes.append(UNCERTAIN_ERASURES.format(uncertain))
    count = len(document["events"])
    summary = f"ok: subject {subject}: {count} events included in {checkpoint_label(origin, size, root)}"
    return failures, "\n".join(notes + [summary])


def verify_dump(lines, note, key):
    """A full dump (JSON lines, sequence 1 first) against a checkpoint: (failures, summary)."""
    try:
        origin, size, root = verify_checkpoint(note, key)
    except VerificationError as error:
        return [f"checkpoint: {error}"], ""
    failures, ledger, frontier = [], ErasureLedger(), Frontier()
    previous_hash, root_at_size = GENESIS_HASH, EMPTY_ROOT if size == 0 else None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = Event(json.loads(line))
        except ValueError:
            raise FormatError(f"dump line {number}: not JSON") from None
        expected = frontier.size + 1
        if event.sequence != expected:
            failures.append(f"{event.label}: sequence: expected {expected}; events missing or out of order")
            return failures, ""
        failed = [f"{event.label}: {f}" for f in event.check()]
        if event["prev_hash"] != previous_hash:
            failed.append(f"{event.label}: chain: prev_hash is not the hash of the previous event")
        failures.extend(failed)
        ledger.add(event)
        frontier.push(leaf_hash(event.leaf_data()))
        if frontier.size == size:
            root_at_size = frontier.root()
        previous_hash = event["hash"]
    count = frontier.size
    erasure_failures, uncertain = ledger.finish(lambda sequence: 1 <= sequence <= count)
    failures.extend(erasure_failures)
    if count < size:
        failures.append(f"tree: truncated: the dump has {count} events, the checkpoint covers {size}")
    elif root_at_size != root:
        failures.append(f"tree: the first {size} events' root is {root_at_size.hex()}, not the signed root")
    notes = []
    if uncertain:
        notes.append(UNCERTAIN_ERASURES.format(uncertain))
    if count > size:
        notes.append(f"note: {count - size} events after the checkpoint: chain checked, not signed yet")
    summary = f"ok: {count} events checked (chain, payloads); the first {size} match "
    summary += checkpoint_label(origin, size, root)
    return failures, "\n".join(notes + [summary])


def verify_checkpoint_file(note, key):
    """One checkpoint note: (failures, summary)."""
    try:
        origin, size, root = verify_checkpoint(note, key)
    except VerificationError as error:
        return [f"checkpoint: {error}"], ""
    return [], f"ok: {checkpoint_label(origin, size, root)}, signed by {key}"


def verify_consistency_files(old_note, new_note, proof_document, key):
    """Two checkpoints and the proof that the second extends the first: (failures, summary)."""
    try:
        old_origin, old_size, old_root = verify_checkpoint(old_note, key)
    except VerificationError as error:
        return [f"old checkpoint: {error}"], ""
    try:
        _, new_size, new_root = verify_checkpoint(new_note, key)
    except VerificationError as error:
        return [f"new checkpoint: {error}"], ""
    if not isinstance(proof_document, dict):
        raise FormatError("consistency proof: not a JSON object")
    hashes = decode_hashes(proof_document.get("hashes"), "consistency proof hashes")
    failures = []
    if (proof_document.get("old_size"), proof_document.get("new_size")) != (old_size, new_size):
        claimed = f"{proof_document.get('old_size')} -> {proof_document.get('new_size')}"
        failures.append(f"consistency: the proof is for {claimed}, the notes for {old_size} -> {new_size}")
    elif not verify_consistency(old_size, new_size, old_root, new_root, hashes):
        failures.append(f"consistency: the proof does not show that size {new_size} extends size {old_size}")
    summary = (f"ok: {checkpoint_label(old_origin, new_size, new_root)} extends size {old_size} "
               f"root {old_root.hex()} ({len(hashes)} proof hashes)")  # fmt: skip
    return failures, summary


# --- Self-test ------------------------------------------------------------------------------

# RFC 8032 section 7.1, TEST 1 and TEST 2: (secret key, public key, message, signature).
RFC8032_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]

# The example of the `signed_note` crate and Go's golang.org/x/mod/sumdb/note documentation.
NOTE_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
NOTE_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
NOTE_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
NOTE_SIGNATURE_LINE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
NOTE_OTHER_SIGNATURE_LINE = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# The Certificate Transparency reference tree: its 8 leaves, the roots of sizes 0..8, and
# known proofs ((1-based leaf, size, path) and (old size, new size, proof)).
CT_LEAVES = [
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
]  # fmt: skip
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CT_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip

# What serde_json 1.x writes for the tuple (7, -12, S, "plain ascii", "") where S holds
# U+0000..U+001F, `"`, `\`, `/`, U+007F, U+0080, U+009F, U+00A0, U+00E9, U+2028, U+2029,
# U+FEFF, U+FFFD, U+1F600 and U+10FFFF: the escaping the leaf data depends on.
SERDE_JSON_SAMPLE_CODEPOINTS = list(range(0x20)) + [
    0x22, 0x5C, 0x2F, 0x7F, 0x80, 0x9F, 0xA0, 0xE9, 0x2028, 0x2029, 0xFEFF, 0xFFFD, 0x1F600, 0x10FFFF,
]  # fmt: skip
SERDE_JSON_SAMPLE_OUTPUT = (
    "5b372c2d31322c225c75303030305c75303030315c75303030325c75303030335c75303030345c7530303035"
    "5c75303030365c75303030375c625c745c6e5c75303030625c665c725c75303030655c75303030665c753030"
    "31305c75303031315c75303031325c75303031335c75303031345c75303031355c75303031365c7530303137"
    "5c75303031385c75303031395c75303031615c75303031625c75303031635c75303031645c75303031655c75"
    "303031665c225c5c2f7fc280c29fc2a0c3a9e280a8e280a9efbbbfefbfbdf09f9880f48fbfbf222c22706c61"
    "696e206173636969222c22225d"
)


class SelfTest:
    def __init__(self):
        self.checks = 0
        self.failures = []

    def expect(self, condition, what):
        self.checks += 1
        if not condition:
            self.failures.append(what)

    def expect_failure(self, function, what):
        """`function` must raise VerificationError or FormatError, or return (failures, summary)
        with at least one failure."""
        self.checks += 1
        try:
            result = function()
        except (VerificationError, FormatError):
            return
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], list) and result[0]:
            return
        self.failures.append(f"accepted: {what}")


def selftest_ed25519(t):
    for number, (secret, public, message, signature) in enumerate(RFC8032_VECTORS, start=1):
        seed, public, message, signature = map(bytes.fromhex, (secret, public, message, signature))
        t.expect(ed25519_public_key(seed) == public, f"RFC 8032 test {number}: public key")
        t.expect(ed25519_sign(seed, message) == signature, f"RFC 8032 test {number}: signature")
        t.expect(ed25519_verify(public, message, signature), f"RFC 8032 test {number}: verifies")
        t.expect(not ed25519_verify(public, message + b"x", signature), f"RFC 8032 test {number}: message")
        for position in (0, 31, 32, 63):
            flipped = bytearray(signature)
            flipped[position] ^= 0x01
            what = f"RFC 8032 test {number}: flipped byte {position}"
            t.expect(not ed25519_verify(public, message, bytes(flipped)), what)
        s = int.from_bytes(signature[32:], "little") + ED_L  # same point equation, S not reduced
        t.expect(not ed25519_verify(public, message, signature[:32] + s.to_bytes(32, "little")),
                 f"RFC 8032 test {number}: S >= L rejected")  # fmt: skip


def selftest_signed_note(t):
    name, seed = parse_signer_key(NOTE_SIGNER_KEY)
    derived = verifier_key_text(name, ed25519_public_key(seed))
    t.expect(derived == NOTE_VERIFIER_KEY, f"signed note: derived verifier key {derived}")
    key = VerifierKey(derived)
    note = NOTE_TEXT + "\n" + NOTE_SIGNATURE_LINE
    t.expect(open_note(note, key) == NOTE_TEXT, "signed note: the example verifies")
    t.expect(sign_note(NOTE_TEXT, name, seed) == note, "signed note: signing reproduces the example")
    both = NOTE_TEXT + "\n" + NOTE_OTHER_SIGNATURE_LINE + NOTE_SIGNATURE_LINE
    t.expect(open_note(both, key) == NOTE_TEXT, "signed note: a signature by an unknown key is ignored")
    changed = NOTE_TEXT.replace("problem,", "problem;") + "\n" + NOTE_SIGNATURE_LINE
    t.expect_failure(lambda: open_note(changed, key), "signed note: changed text")
    other_only = NOTE_TEXT + "\n" + NOTE_OTHER_SIGNATURE_LINE
    t.expect_failure(lambda: open_note(other_only, key), "signed note: no signature by the key")
    t.expect_failure(lambda: open_note(note.replace("\u2014", "-"), key), "signed note: hyphen for em dash")
    t.expect_failure(lambda: open_note(note.replace("\n\n", "\n"), key), "signed note: no blank line")
    control = NOTE_TEXT.replace(",", ",\r") + "\n" + NOTE_SIGNATURE_LINE
    t.expect_failure(lambda: open_note(control, key), "signed note: control character")
    # Signatures sharing the name or the key id, not both, are another key's: ignored.
    same_name = f"\u2014 PeterNeumann {base64.b64encode(bytes.fromhex('00000001') + bytes(64)).decode()}\n"
    same_id = f"\u2014 Other {base64.b64encode(key.key_id + bytes(64)).decode()}\n"
    for line in (same_name, same_id):
        t.expect(open_note(NOTE_TEXT + "\n" + line + NOTE_SIGNATURE_LINE, key) == NOTE_TEXT, f"ignored: {line!r}")
    wrong_id = NOTE_VERIFIER_KEY.replace("c74f20a3", "c74f20a4")
    t.expect_failure(lambda: VerifierKey(wrong_id), "verifier key: wrong key id")
    other = VerifierKey(verifier_key_text("PeterNeumann", ed25519_public_key(bytes(32))))
    t.expect_failure(lambda: open_note(note, other), "signed note: same name, other key")
    tampered = bytearray(strict_base64(NOTE_SIGNATURE_LINE.split(" ")[2].strip(), "line"))
    tampered[10] ^= 0x01
    bad_line = f"\u2014 PeterNeumann {base64.b64encode(bytes(tampered)).decode()}\n"
    t.expect_failure(lambda: open_note(NOTE_TEXT + "\n" + bad_line, key), "signed note: flipped byte")
    # A checkpoint note: parsed, size and root read back, origin bound to the key name.
    checkpoint = f"PeterNeumann\n5\n{base64.b64encode(bytes(range(32))).decode()}\n"
    signed = sign_note(checkpoint, name, seed)
    t.expect(verify_checkpoint(signed, key) == ("PeterNeumann", 5, bytes(range(32))), "checkpoint")
    root_line = base64.b64encode(bytes(range(32))).decode()
    bad_texts = [
        f"PeterNeumann\n05\n{root_line}\n",  # leading zero
        f"PeterNeumann\n+5\n{root_line}\n",
        f"PeterNeumann\n{2**64}\n{root_line}\n",
        "PeterNeumann\n5\n",  # no root
        f"PeterNeumann\n5\n{base64.b64encode(bytes(31)).decode()}\n",  # 31-byte root
        f"PeterNeumann\n5\n{root_line.rstrip('=')}\n",  # unpadded
    ]
    for bad_text in bad_texts:
        bad_note = sign_note(bad_text, name, seed)
        t.expect_failure(lambda: verify_checkpoint(bad_note, key), f"checkpoint: {bad_text!r}")
    extended = sign_note(checkpoint + "extension line\n", name, seed)
    t.expect(verify_checkpoint(extended, key)[1] == 5, "checkpoint: an extension line is allowed")
    other_origin = sign_note(f"Other\n5\n{root_line}\n", name, seed)
    t.expect_failure(lambda: verify_checkpoint(other_origin, key), "checkpoint: origin is not the key name")


def selftest_json(t):
    sample = "".join(chr(c) for c in SERDE_JSON_SAMPLE_CODEPOINTS)
    t.expect(compact_array([7, -12, sample, "plain ascii", ""]).hex() == SERDE_JSON_SAMPLE_OUTPUT,
             "leaf data: escaping differs from serde_json")  # fmt: skip
    # Python's json module agrees with serde_json's compact form for every character.
    everything = "".join(chr(c) for c in range(0x3000)) + "\u2028\u2029\ufeff\U0001f600\U0010ffff"
    python = json.dumps([1, everything], separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    t.expect(compact_array([1, everything]) == python, "leaf data: json.dumps differs from serde_json")
    t.expect_failure(lambda: compact_array(["\ud800"]), "leaf data: a lone surrogate")


def selftest_merkle(t):
    leaves = [leaf_hash(bytes.fromhex(x)) for x in CT_LEAVES]
    for size in range(len(CT_ROOTS)):
        t.expect(reference_root(leaves[:size]).hex() == CT_ROOTS[size], f"RFC 6962 root of size {size}")
    for leaf, size, path in CT_INCLUSION:
        proof = [bytes.fromhex(x) for x in path]
        root = bytes.fromhex(CT_ROOTS[size])
        t.expect(reference_inclusion_path(leaf - 1, leaves[:size]) == proof, f"known PATH({leaf - 1}, {size})")
        t.expect(verify_inclusion(leaf - 1, size, leaves[leaf - 1], proof, root), f"known proof {leaf - 1} in {size}")
    for old, new, path in CT_CONSISTENCY:
        proof = [bytes.fromhex(x) for x in path]
        t.expect(reference_consistency_proof(old, leaves[:new]) == proof, f"known PROOF({old}, {new})")
        old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
        t.expect(verify_consistency(old, new, old_root, new_root, proof), f"known proof {old} -> {new}")
    # Trees of every size 1..40: every proof the RFC defines verifies; any change does not.
    all_leaves = [leaf_hash(bytes([i, i * 7 % 256, 0x5A])) for i in range(40)]
    roots = [reference_root(all_leaves[:n]) for n in range(41)]
    frontier = Frontier()
    for n in range(1, 41):
        frontier.push(all_leaves[n - 1])
        t.expect(frontier.root() == roots[n], f"frontier root of size {n}")
        tree = all_leaves[:n]
        for m in range(n):
            proof = reference_inclusion_path(m, tree)
            t.expect(verify_inclusion(m, n, tree[m], proof, roots[n]), f"inclusion {m} in {n}")
            # The probes of the Certificate Transparency verifier tests: other index, size, leaf,
            # root, and proofs with a hash added, removed or changed.
            wrong = [(m - 1, n, tree[m], proof, roots[n]), (m + 1, n, tree[m], proof, roots[n]),
                     (m ^ 2, n, tree[m], proof, roots[n]), (m, n * 2, tree[m], proof, roots[n]),
                     (m, n // 2, tree[m], proof, roots[n]), (m, n, leaf_hash(b"wrong"), proof, roots[n]),
                     (m, n, tree[m], proof, EMPTY_ROOT), (m, n, tree[m], proof + [roots[n]], roots[n]),
                     (m, n, tree[m], [roots[n]] + proof, roots[n])]  # fmt: skip
            if proof:
                wrong.append((m, n, tree[m], proof[:-1], roots[n]))
            if len(proof) > 1:
                wrong.append((m, n, tree[m], proof[:1] + [leaf_hash(b"some")] + proof[1:], roots[n]))
            for probe in wrong:
                if probe != (m, n, tree[m], proof, roots[n]):
                    t.expect(not verify_inclusion(*probe), f"inclusion {m} in {n}: accepted {probe[:2]}")
            for i in range(len(proof)):
                flipped = list(proof)
                flipped[i] = bytes([proof[i][0] ^ 0x08]) + proof[i][1:]
                t.expect(not verify_inclusion(m, n, tree[m], flipped, roots[n]), f"inclusion {m} in {n}: flip {i}")
        for m in range(0, n + 1):
            proof = reference_consistency_proof(m, tree) if 0 < m < n else []
            t.expect(verify_consistency(m, n, roots[m], roots[n], proof), f"consistency {m} -> {n}")
            if 0 < m < n:
                # The same kinds of probes: other sizes, roots swapped, a hash added, removed
                # or changed.
                wrong = [(m, n, roots[m], roots[n], proof[:-1]), (m, n, roots[m], roots[n], proof + [roots[n]]),
                         (m, n, roots[n], roots[m], proof), (m, n, roots[m], roots[n], proof[:1] + proof)]  # fmt: skip
                for old, new in ((m - 1, n), (m + 1, n), (m ^ 2, n), (m, n * 2), (m, n // 2)):
                    wrong.append((old, new, roots[m], roots[n], proof))
                for i in range(len(proof)):
                    flipped = list(proof)
                    flipped[i] = bytes([proof[i][0] ^ 0x10]) + proof[i][1:]
                    wrong.append((m, n, roots[m], roots[n], flipped))
                for probe in wrong:
                    t.expect(not verify_consistency(*probe), f"consistency {m} -> {n}: accepted {probe[:2]}")
            t.expect(not verify_consistency(m, n, leaf_hash(b"wrong"), roots[n], proof) or m == 0,
                     f"consistency {m} -> {n}: wrong old root")  # fmt: skip
    t.expect(not verify_consistency(0, 3, leaf_hash(b"x"), roots[3], []), "consistency from 0, a non-empty root")
    t.expect(not verify_consistency(3, 2, roots[3], roots[2], []), "consistency to a smaller tree")


def _commit(salt, detail):
    return hashlib.sha256(bytes.fromhex(salt) + detail.encode("utf-8")).hexdigest()


def _v2_hash(event):
    return hashlib.sha256(event["prev_hash"].encode("ascii") + Event(event).leaf_data()).hexdigest()


# Fields of the synthetic log's events that are not "" everywhere, by sequence: escapes and
# non-ASCII characters in leaf fields, which the leaf data must encode as serde_json does.
_SAMPLE_OPERATORS = {5: "ops-\u0142ukasz", 7: "op\u0001\u001f\u007f\u2028<&>"}
_SAMPLE_REASONS = {6: 'ticket "42"\n'}


def _synthetic_log():
    """A small log in the dump format: v1 events (unsalted, chained over the detail), v2 events
    (salted), awkward characters, and one subject's erased payloads with their erasure event."""
    events, previous = [], GENESIS_HASH
    details = [
        ("alice", "subject_upserted", '{"before":null,"after":{"plan":"FREE"}}'),
        ("alice", "choice_set", '{"purpose":"MODEL_TRAINING","before":null,"after":"REFUSED"}'),
        ("bob", "subject_upserted", '{"note":"caf\u00e9 \u2028 \\u0001 \\"quoted\\""}'),
        ("", "policy_applied", '{"version":"2026-03"}'),
        ("alice", "choice_set", '{"purpose":"ANALYTICS","before":null,"after":"GRANTED"}'),
        ("bob", "restriction_set", '{"before":{"status":"ACTIVE"},"after":{"status":"RESTRICTED"}}'),
        ("carol\u00e9", "subject_upserted", '{"x":"\u0000\t\u001f\u007f"}'),
        ("alice", "feedback_recorded", '{"conversation_id":"c-1"}'),
        ("bob", "choice_set", '{"purpose":"MODEL_TRAINING","before":null,"after":"GRANTED"}'),
        ("carol\u00e9", "choice_set", '{"purpose":"ANALYTICS","before":null,"after":"REFUSED"}'),
        ("bob", PAYLOAD_ERASED_KIND, '{"erased":[6,9]}'),
        ("alice", "choice_set", '{"purpose":"MODEL_TRAINING","before":"REFUSED","after":"GRANTED"}'),
        ("alice", "subject_upserted", '{"before":{"plan":"FREE"},"after":{"plan":"PRO"}}'),
    ]
    for sequence, (subject, kind, detail) in enumerate(details, start=1):
        v1 = sequence <= 4
        salt = "" if v1 else hashlib.sha256(b"salt" + bytes([sequence])).hexdigest()[:32]
        event = {
            "revision": f"r1.{sequence:x}",
            "sequence": sequence,
            "event_id": f"ev-{sequence:04d}",
            "at_micros": 1_767_000_000_000_000 + sequence * 1_000_003,
            "subject_id": subject,
            "kind": kind,
            "caller": "gateway" if sequence % 3 else "anonymous",
            "operator_id": _SAMPLE_OPERATORS.get(sequence, ""),
            "actor_reason": _SAMPLE_REASONS.get(sequence, ""),
            "detail_json": detail,
            "payload_salt": salt,
            "payload_sha256": _commit(salt, detail),
            "policy_version": "2026-03",
            "trace_id": "" if sequence % 2 else "4bf92f3577b34da6a3ce929d0e0e4736",
            "prev_hash": previous,
            "hash": "",
        }
        if v1:
            chained = Event(event).v1_canonical_bytes()
            event["hash"] = hashlib.sha256(previous.encode("ascii") + chained).hexdigest()
        else:
            event["hash"] = _v2_hash(event)
        previous = event["hash"]
        events.append(event)
    for event in events:
        if event["sequence"] in (6, 9):  # bob's v2 events named by the erasure, sequence 11
            event["detail_json"] = event["payload_salt"] = None
    leaves = [leaf_hash(Event(e).leaf_data()) for e in events]
    return events, leaves


def _rechain(events, start):
    """Recomputes the v2 hash and link of every event from index `start` on, as someone
    rewriting history together with its chain would."""
    previous = events[start - 1]["hash"] if start else GENESIS_HASH
    for event in events[start:]:
        event["prev_hash"] = previous
        event["hash"] = previous = _v2_hash(event)


class SampleLog:
    """The synthetic log, signed with a fixed self-test key: its checkpoints, exports, dump
    lines and consistency proofs, built with the reference definitions above."""

    SEED = hashlib.sha256(b"assent offline verifier self-test key").digest()
    ORIGIN = "audit.example/selftest"

    def __init__(self):
        self.key = VerifierKey(verifier_key_text(self.ORIGIN, ed25519_public_key(self.SEED)))
        self.events, self.leaves = _synthetic_log()

    def checkpoint(self, size, leaves=None):
        root = base64.b64encode(reference_root((leaves or self.leaves)[:size])).decode()
        return sign_note(f"{self.ORIGIN}\n{size}\n{root}\n", self.ORIGIN, self.SEED)

    def export(self, subject, size=None):
        size = size or len(self.leaves)
        chosen = []
        for event in self.events[:size]:
            if event["subject_id"] == subject:
                index = event["sequence"] - 1
                proof = [h.hex() for h in reference_inclusion_path(index, self.leaves[:size])]
                chosen.append(dict(event, leaf_index=index, inclusion_proof=proof))
        return {
            "format": SUBJECT_EXPORT_FORMAT,
            "subject_id": subject,
            "verifier_key": self.key.text,
            "checkpoint": self.checkpoint(size),
            "events": chosen,
        }

    def consistency(self, old_size, new_size):
        proof = []
        if 0 < old_size < new_size:
            proof = reference_consistency_proof(old_size, self.leaves[:new_size])
        return {"old_size": old_size, "new_size": new_size, "hashes": [h.hex() for h in proof]}

    @staticmethod
    def dump_lines(events):
        return [json.dumps(e, ensure_ascii=False) + "\n" for e in events]

    def write(self, directory):
        """The files an auditor would receive, for checking them with another implementation."""
        files = {
            "verifier.key": self.key.text + "\n",
            "10.checkpoint": self.checkpoint(10),
            "13.checkpoint": self.checkpoint(13),
            "events.jsonl": "".join(self.dump_lines(self.events)),
            "consistency-10-13.json": json.dumps(self.consistency(10, 13)),
        }
        for name, subject in (("alice", "alice"), ("bob", "bob"), ("carol", "carol\u00e9")):
            files[f"export-{name}.json"] = json.dumps(self.export(subject), ensure_ascii=False, indent=1)
        os.makedirs(directory, exist_ok=True)
        for name, content in files.items():
            with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
                handle.write(content)
        return sorted(files)


def selftest_end_to_end(t):
    sample = SampleLog()
    key, events, dump_lines = sample.key, sample.events, sample.dump_lines
    full, partial = sample.checkpoint(13), sample.checkpoint(10)

    def copy():
        return [dict(e) for e in events]

    failures, summary = verify_dump(dump_lines(events), full, key)
    t.expect(not failures and summary.startswith("ok"), f"dump: valid log rejected: {failures}")
    failures, _ = verify_dump(dump_lines(events), partial, key)
    t.expect(not failures, f"dump: valid log against an older checkpoint rejected: {failures}")

    # The tamper cases of issue 20, each against the last published checkpoint.
    truncated = copy()[:8]
    t.expect_failure(lambda: verify_dump(dump_lines(truncated), full, key), "dump: tail truncated")
    rewritten = copy()
    rewritten[6]["detail_json"] = '{"x":"rewritten"}'
    rewritten[6]["payload_sha256"] = _commit(rewritten[6]["payload_salt"], '{"x":"rewritten"}')
    _rechain(rewritten, 6)
    failures, _ = verify_dump(dump_lines(rewritten), full, key)
    t.expect(len(failures) == 1 and failures[0].startswith("tree:"), f"dump: middle event rewritten: {failures}")
    t.expect_failure(lambda: verify_dump(dump_lines(events[1:]), full, key), "dump: first event deleted")
    bad_v1 = copy()
    bad_v1[3]["hash"] = "e" * 64  # a v1 event's hash, with the next event linked to it
    bad_v1[4]["prev_hash"] = bad_v1[3]["hash"]
    _rechain(bad_v1, 4)
    failures, _ = verify_dump(dump_lines(bad_v1), full, key)
    t.expect(any(f.startswith("sequence 4 ") and "chain: hash" in f for f in failures), f"dump: v1 hash: {failures}")
    relinked = copy()
    relinked[7]["prev_hash"] = "f" * 64  # the event's own hash recomputed: only the link shows it
    relinked[7]["hash"] = _v2_hash(relinked[7])
    failures, _ = verify_dump(dump_lines(relinked), full, key)
    t.expect(any(f.startswith("sequence 8 ") and "prev_hash" in f for f in failures), f"dump: link: {failures}")
    unnamed = copy()
    unnamed[10]["detail_json"] = '{"erased":[9]}'  # the erasure no longer names sequence 6
    unnamed[10]["payload_sha256"] = _commit(unnamed[10]["payload_salt"], '{"erased":[9]}')
    t.expect_failure(lambda: verify_dump(dump_lines(unnamed), full, key), "dump: payload missing, not erased")
    kept = copy()
    kept[8]["detail_json"], kept[8]["payload_salt"] = "{}", "00"  # sequence 9, named by the erasure
    kept[8]["payload_sha256"] = _commit("00", "{}")
    _rechain(kept, 8)
    kept_checkpoint = sample.checkpoint(13, [leaf_hash(Event(e).leaf_data()) for e in kept])
    failures, _ = verify_dump(dump_lines(kept), kept_checkpoint, key)
    t.expect(failures == ["sequence 9: payload: still present, but erased by 11"], f"dump: kept: {failures}")
    erased_v1 = copy()
    erased_v1[2]["detail_json"] = erased_v1[2]["payload_salt"] = None
    failures, _ = verify_dump(dump_lines(erased_v1), full, key)
    t.expect(any("sequence 3" in f and "chain" in f for f in failures), f"dump: erased v1 event: {failures}")
    changed_detail = copy()
    changed_detail[1]["detail_json"] = changed_detail[1]["detail_json"].replace("REFUSED", "GRANTED")
    failures, _ = verify_dump(dump_lines(changed_detail), full, key)
    t.expect(any(f.startswith("sequence 2 ") and "payload" in f for f in failures), f"dump: detail: {failures}")
    forged = full.replace(full.split(" ")[-1], base64.b64encode(bytes(68)).decode() + "\n")
    t.expect_failure(lambda: verify_dump(dump_lines(events), forged, key), "dump: forged signature")

    # Subject exports: each subject's events with inclusion proofs against the full checkpoint.
    for subject in ("alice", "bob", "carol\u00e9"):
        failures, summary = verify_export(sample.export(subject), key)
        t.expect(not failures and summary.startswith("ok"), f"export of {subject} rejected: {failures}")
    document = sample.export("alice")
    document["events"][1]["inclusion_proof"][0] = "00" * 32
    t.expect_failure(lambda: verify_export(document, key), "export: wrong inclusion proof")
    document = sample.export("alice")
    document["events"][2]["operator_id"] = "someone-else"
    t.expect_failure(lambda: verify_export(document, key), "export: changed event")
    document = sample.export("bob")
    del document["events"][-1]  # the erasure event
    t.expect_failure(lambda: verify_export(document, key), "export: erased payloads, no erasure event")
    document = sample.export("alice")
    document["checkpoint"] = sample.checkpoint(12)
    t.expect_failure(lambda: verify_export(document, key), "export: proofs against another tree size")

    # Consistency between the two checkpoints, backwards, and to a forked log.
    proof = sample.consistency(10, 13)
    failures, _ = verify_consistency_files(partial, full, proof, key)
    t.expect(not failures, f"consistency 10 -> 13 rejected: {failures}")
    backwards = dict(proof, old_size=13, new_size=10)
    t.expect_failure(lambda: verify_consistency_files(full, partial, backwards, key), "consistency: backwards")
    forked = sample.checkpoint(13, [leaf_hash(b"fork")] + sample.leaves[1:])
    t.expect_failure(lambda: verify_consistency_files(partial, forked, proof, key), "consistency: a forked log")

    # The command line, end to end, on the files `sample` writes.
    with tempfile.TemporaryDirectory() as directory:
        sample.write(directory)

        def path(name):
            return os.path.join(directory, name)

        with open(path("short.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(dump_lines(truncated))
        with open(path("not.json"), "w", encoding="utf-8") as handle:
            handle.write("{")
        with open(path("forged.checkpoint"), "w", encoding="utf-8") as handle:
            handle.write(forged)
        key_file, new, old = path("verifier.key"), path("13.checkpoint"), path("10.checkpoint")
        cases = [
            (["dump", path("events.jsonl"), "--checkpoint", new, "--key", key_file], EXIT_VERIFIED),
            (["dump", path("short.jsonl"), "--checkpoint", new, "--key", key.text], EXIT_FAILED),
            (["export", path("export-bob.json"), "--key", key.text], EXIT_VERIFIED),
            (["consistency", old, new, path("consistency-10-13.json"), "--key", key_file], EXIT_VERIFIED),
            (["consistency", new, old, path("consistency-10-13.json"), "--key", key_file], EXIT_FAILED),
            (["export", path("not.json"), "--key", key.text], EXIT_USAGE),
            (["dump", key_file], EXIT_USAGE),
            (["checkpoint", new, "--key", key_file], EXIT_VERIFIED),
            (["checkpoint", path("forged.checkpoint"), "--key", key_file], EXIT_FAILED),
        ]
        with open(os.devnull, "w") as devnull:
            for arguments, expected in cases:
                status = run(arguments, out=devnull, err=devnull)
                t.expect(status == expected, f"command line {arguments[:2]}: exit {status}, not {expected}")


def selftest():
    sections = [
        ("Ed25519 (RFC 8032 7.1 tests 1 and 2)", selftest_ed25519),
        ("signed note (signed_note / sumdb note example)", selftest_signed_note),
        ("leaf data JSON escaping (serde_json)", selftest_json),
        ("RFC 6962 trees, sizes 0..40, PATH and PROOF", selftest_merkle),
        ("export, dump and consistency of a signed synthetic log", selftest_end_to_end),
    ]
    total_checks, total_failures, started = 0, 0, time.monotonic()
    for title, function in sections:
        t, begun = SelfTest(), time.monotonic()
        try:
            function(t)
        except Exception as error:  # a crash is a failed section, reported like one
            t.failures.append(f"raised {type(error).__name__}: {error}")
        elapsed = time.monotonic() - begun
        status = "ok" if not t.failures else "FAILED"
        print(f"{status:6} {title}: {t.checks} checks, {elapsed:.2f}s")
        for failure in t.failures:
            print(f"       {failure}")
        total_checks += t.checks
        total_failures += len(t.failures)
    elapsed = time.monotonic() - started
    if total_failures:
        print(f"FAILED: {total_failures} of {total_checks} self-test checks ({elapsed:.2f}s)")
        return EXIT_FAILED
    print(f"ok: {total_checks} self-test checks ({elapsed:.2f}s)")
    return EXIT_VERIFIED


# --- Command line ---------------------------------------------------------------------------

USAGE = __doc__.split("\n\n")[1]


def _read_text(path):
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8") from None


def _read_json(path):
    try:
        return json.loads(_read_text(path))
    except ValueError as error:
        raise FormatError(f"{path}: not JSON ({error})") from None


def _options(arguments, positional, flags):
    """(positional values, {flag: value}); FormatError on anything else."""
    values, options, rest = [], {}, list(arguments)
    while rest:
        argument = rest.pop(0)
        if argument in flags:
            if not rest:
                raise FormatError(f"{argument} needs a value")
            options[argument] = rest.pop(0)
        elif argument.startswith("--"):
            raise FormatError(f"unknown option {argument}")
        else:
            values.append(argument)
    missing = [f for f in flags if f not in options]
    if len(values) != positional or missing:
        raise FormatError("wrong arguments")
    return values, options


def run(arguments, out=None, err=None):
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if not arguments:
            raise FormatError("no command")
        command, rest = arguments[0], arguments[1:]
        if command == "selftest" and not rest:
            return selftest()
        if command == "sample" and len(rest) == 1:
            names = SampleLog().write(rest[0])
            print(f"wrote {', '.join(names)} to {rest[0]}", file=out)
            return EXIT_VERIFIED
        if command in ("selftest", "sample"):
            raise FormatError("wrong arguments")
        if command == "export":
            (path,), options = _options(rest, 1, ["--key"])
            failures, summary = verify_export(_read_json(path), load_key(options["--key"]))
        elif command == "dump":
            (path,), options = _options(rest, 1, ["--checkpoint", "--key"])
            key, note = load_key(options["--key"]), _read_text(options["--checkpoint"])
            with open(path, encoding="utf-8") as lines:
                failures, summary = verify_dump(lines, note, key)
        elif command == "checkpoint":
            (path,), options = _options(rest, 1, ["--key"])
            failures, summary = verify_checkpoint_file(_read_text(path), load_key(options["--key"]))
        elif command == "consistency":
            (old, new, proof), options = _options(rest, 3, ["--key"])
            key = load_key(options["--key"])
            notes = _read_text(old), _read_text(new)
            failures, summary = verify_consistency_files(*notes, _read_json(proof), key)
        else:
            raise FormatError(f"unknown command {command!r}")
    except FormatError as error:
        print(f"error: {error}", file=err)
        if str(error) in ("no command", "wrong arguments") or str(error).startswith("unknown"):
            print(USAGE, file=err)
        return EXIT_USAGE
    except (OSError, UnicodeDecodeError) as error:
        print(f"error: {error}", file=err)
        return EXIT_USAGE
    if failures:
        for failure in failures:
            print(f"FAILED {failure}", file=out)
        print(f"verification failed: {len(failures)} check(s)", file=out)
        return EXIT_FAILED
    print(summary, file=out)
    return EXIT_VERIFIED


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
