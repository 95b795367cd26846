//! Signed checkpoints: a C2SP `tlog-checkpoint` (origin, tree size, root) as the text of a C2SP
//! `signed-note`, signed with Ed25519. Keys are written in the text formats of Go's
//! `golang.org/x/mod/sumdb/note`, so the notes verify with that package and with any other
//! implementation of the two specifications.
//!
//! A checkpoint's text is `"<origin>\n<tree size>\n<base64 root>\n"`; the signed note adds a
//! blank line and `"— <key name> <base64(key id || signature)>\n"`. The key name is the origin,
//! and the key id is the first four bytes of SHA-256(name || 0x0A || 0x01 || public key).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use super::merkle::Hash;

/// The signature algorithm byte of an Ed25519 key in the note key formats.
const ALGORITHM_ED25519: u8 = 1;

/// Why a key, a note or a checkpoint was refused. Each message starts with what it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("signer key: {0}")]
    SignerKey(String),
    #[error("verifier key: {0}")]
    VerifierKey(String),
    #[error("key name: {0:?} must be non-empty, without spaces or '+'")]
    KeyName(String),
    #[error("note: {0}")]
    Note(String),
    #[error("note: has no signature by key {0}")]
    NotSigned(String),
    #[error("note: the signature by key {0} does not verify")]
    BadSignature(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// A checkpoint signed by a [`CheckpointSigner`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The signed note, byte for byte as published.
    pub note: String,
    pub size: u64,
    pub root: Hash,
}

/// The key a server signs checkpoints with; its name is the log's origin.
#[derive(Clone)]
pub struct CheckpointSigner {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CheckpointSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl CheckpointSigner {
    /// Parses a signer key file: one line
    /// `PRIVATE+KEY+<name>+<hex8 key id>+<base64(0x01 || 32-byte Ed25519 seed)>` (surrounding
    /// white space, such as the file's last newline, is ignored).
    pub fn from_key_text(text: &str) -> Result<CheckpointSigner, NoteError> {
        let error = |message: &str| NoteError::SignerKey(message.to_owned());
        let fields: Vec<&str> = text.trim().splitn(5, '+').collect();
        let [private, key, name, id, encoded] = fields[..] else {
            return Err(error("is not PRIVATE+KEY+<name>+<hex key id>+<base64 key>"));
        };
        if private != "PRIVATE" || key != "KEY" {
            return Err(error("does not start with PRIVATE+KEY+"));
        }
        let claimed_id = parse_key_id(id).ok_or_else(|| error("key id is not 8 hex digits"))?;
        let name = parse_key_name(name)?;
        let seed = parse_key_bytes(encoded).map_err(NoteError::SignerKey)?;
        let key = SigningKey::from_bytes(&seed);
        let signer = CheckpointSigner {
            key_id: key_id(&name, &key.verifying_key()),
            name,
            key,
        };
        if signer.key_id != claimed_id {
            return Err(error(
                "key id does not match the name and the key (a damaged or edited key file)",
            ));
        }
        Ok(signer)
    }

    /// The log's origin: the key's name, the first line of every checkpoint it signs.
    pub fn origin(&self) -> &str {
        &self.name
    }

    /// The verifier key that checks this signer's notes: `<name>+<hex8 key id>+<base64(0x01 ||
    /// public key)>`.
    pub fn verifier_key(&self) -> String {
        verifier_key_text(&self.name, &self.key.verifying_key())
    }

    /// Signs the checkpoint of the tree of `size` leaves with root `root`. Ed25519 is
    /// deterministic: the same checkpoint signed twice gives the same bytes.
    pub fn sign(&self, size: u64, root: &Hash) -> SignedCheckpoint {
        SignedCheckpoint {
            note: self.sign_text(&checkpoint_text(&self.name, size, root)),
            size,
            root: *root,
        }
    }

    /// The signed note of `text` (which ends with a newline and holds no other control
    /// character).
    fn sign_text(&self, text: &str) -> String {
        let mut note = signed_note::Note::new(text.as_bytes(), &[])
            .expect("a checkpoint's text is a note's text");
        note.add_sigs(&[self])
            .expect("a parsed key's name is valid and Ed25519 signing does not fail");
        String::from_utf8(note.to_bytes()).expect("a note of UTF-8 text is UTF-8")
    }
}

impl signed_note::Signer for CheckpointSigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.key_id
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ed25519_dalek::SignatureError> {
        Ok(ed25519_dalek::Signer::sign(&self.key, message)
            .to_bytes()
            .to_vec())
    }
}

/// A verifier key: checks the notes of one signer.
#[derive(Clone, Debug)]
pub struct CheckpointVerifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl CheckpointVerifier {
    /// Parses `<name>+<hex8 key id>+<base64(0x01 || 32-byte Ed25519 public key)>` (surrounding
    /// white space ignored).
    pub fn from_key_text(text: &str) -> Result<CheckpointVerifier, NoteError> {
        let error = |message: &str| NoteError::VerifierKey(message.to_owned());
        let fields: Vec<&str> = text.trim().splitn(3, '+').collect();
        let [name, id, encoded] = fields[..] else {
            return Err(error("is not <name>+<hex key id>+<base64 key>"));
        };
        if name == "PRIVATE" {
            return Err(error("is a signer (private) key; give the verifier key"));
        }
        let claimed_id = parse_key_id(id).ok_or_else(|| error("key id is not 8 hex digits"))?;
        let name = parse_key_name(name)?;
        let bytes = parse_key_bytes(encoded).map_err(NoteError::VerifierKey)?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| error("key is not an Ed25519 public key"))?;
        let verifier = CheckpointVerifier {
            key_id: key_id(&name, &key),
            name,
            key,
        };
        if verifier.key_id != claimed_id {
            return Err(error("key id does not match the name and the key"));
        }
        Ok(verifier)
    }

    /// The key's name, which is the origin of the checkpoints it verifies.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key as `<name>+<hex8 key id>`, the way messages name it.
    fn label(&self) -> String {
        format!("{}+{:08x}", self.name, self.key_id)
    }

    /// Checks a signed checkpoint: the note parses, carries a valid signature by this key
    /// (signatures by other keys, such as witnesses' cosignatures, are allowed and not
    /// checked), and its text is a checkpoint of this key's origin. Returns the origin, the tree
    /// size and the root.
    pub fn verify(&self, note: &str) -> Result<(String, u64, Hash), NoteError> {
        let text = self.verify_text(note)?;
        let (origin, size, root) = parse_checkpoint_text(&text)?;
        if origin != self.name {
            return Err(NoteError::Checkpoint(format!(
                "origin {origin:?} is not the key's name {:?}",
                self.name
            )));
        }
        Ok((origin, size, root))
    }

    /// The text of a note signed by this key.
    fn verify_text(&self, note: &str) -> Result<String, NoteError> {
        let parsed = signed_note::Note::from_bytes(note.as_bytes()).map_err(|_| {
            NoteError::Note(
                "is not a signed note: UTF-8 text ending in a newline, a blank line, then lines \
                 \"— <name> <base64 signature>\""
                    .to_owned(),
            )
        })?;
        let known = signed_note::VerifierList::new(vec![Box::new(self.clone())]);
        match parsed.verify(&known) {
            Ok(_) => {}
            Err(signed_note::NoteError::UnverifiedNote) => {
                return Err(NoteError::NotSigned(self.label()));
            }
            Err(signed_note::NoteError::InvalidSignature { .. }) => {
                return Err(NoteError::BadSignature(self.label()));
            }
            Err(other) => return Err(NoteError::Note(other.to_string())),
        }
        Ok(String::from_utf8(parsed.text().to_vec()).expect("a parsed note's text is UTF-8"))
    }
}

impl signed_note::Verifier for CheckpointVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.key_id
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = Signature::from_slice(signature) else {
            return false;
        };
        self.key.verify_strict(message, &signature).is_ok()
    }
}

/// Checks a signed checkpoint against a verifier key (see [`CheckpointVerifier::verify`]):
/// the origin, the tree size and the root.
pub fn verify_checkpoint(note: &str, verifier_key: &str) -> Result<(String, u64, Hash), NoteError> {
    CheckpointVerifier::from_key_text(verifier_key)?.verify(note)
}

/// A new Ed25519 key named `name` (the log's origin, such as `consent.example.com/audit`), from
/// the operating system's random numbers: the signer key file's text and the verifier key, each
/// without a trailing newline.
pub fn generate_key(name: &str) -> Result<(String, String), NoteError> {
    let name = parse_key_name(name)?;
    let mut seed = [0_u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let key = SigningKey::from_bytes(&seed);
    let mut encoded_seed = vec![ALGORITHM_ED25519];
    encoded_seed.extend_from_slice(&seed);
    seed.fill(0);
    let signer = format!(
        "PRIVATE+KEY+{name}+{:08x}+{}",
        key_id(&name, &key.verifying_key()),
        BASE64.encode(&encoded_seed)
    );
    encoded_seed.fill(0);
    Ok((signer, verifier_key_text(&name, &key.verifying_key())))
}

/// The checkpoint text: `"<origin>\n<size in decimal>\n<base64 (standard, padded) of the
/// root>\n"`.
pub fn checkpoint_text(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", BASE64.encode(root))
}

/// Parses a checkpoint text: exactly the three lines [`checkpoint_text`] writes (assent writes
/// no extension lines, so a fourth line is refused), the size in canonical decimal, the root
/// the canonical base64 of 32 bytes.
pub fn parse_checkpoint_text(text: &str) -> Result<(String, u64, Hash), NoteError> {
    let error = |message: String| NoteError::Checkpoint(message);
    let body = text
        .strip_suffix('\n')
        .ok_or_else(|| error("does not end with a newline".to_owned()))?;
    let lines: Vec<&str> = body.split('\n').collect();
    let [origin, size, root] = lines[..] else {
        return Err(error(format!(
            "has {} lines, not 3 (origin, tree size, root hash)",
            lines.len()
        )));
    };
    if origin.is_empty() {
        return Err(error("origin is empty".to_owned()));
    }
    let canonical = !size.is_empty()
        && size.bytes().all(|byte| byte.is_ascii_digit())
        && (size == "0" || !size.starts_with('0'));
    let size: u64 = canonical
        .then(|| size.parse().ok())
        .flatten()
        .ok_or_else(|| error(format!("tree size {size:?} is not a decimal number")))?;
    let decoded = BASE64.decode(root).ok().filter(|bytes| bytes.len() == 32);
    let root: Hash = decoded
        .and_then(|bytes| Hash::try_from(bytes).ok())
        .filter(|bytes| BASE64.encode(bytes) == root)
        .ok_or_else(|| error(format!("root {root:?} is not the base64 of 32 bytes")))?;
    Ok((origin.to_owned(), size, root))
}

/// The file a checkpoint is published as: the tree size in 20 decimal digits, so the latest
/// sorts last, then `.checkpoint`.
pub fn checkpoint_file_name(size: u64) -> String {
    format!("{size:020}.checkpoint")
}

/// The tree size of a file named by [`checkpoint_file_name`]; `None` for any other name.
pub fn parse_checkpoint_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".checkpoint")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// SHA-256(name || 0x0A || 0x01 || public key)[..4], big-endian.
fn key_id(name: &str, key: &VerifyingKey) -> u32 {
    let mut encoded = vec![ALGORITHM_ED25519];
    encoded.extend_from_slice(key.as_bytes());
    signed_note::key_id(name, &encoded)
}

fn verifier_key_text(name: &str, key: &VerifyingKey) -> String {
    let mut encoded = vec![ALGORITHM_ED25519];
    encoded.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{:08x}+{}",
        key_id(name, key),
        BASE64.encode(&encoded)
    )
}

fn parse_key_name(name: &str) -> Result<String, NoteError> {
    if signed_note::is_key_name_valid(name) {
        Ok(name.to_owned())
    } else {
        Err(NoteError::KeyName(name.to_owned()))
    }
}

fn parse_key_id(id: &str) -> Option<u32> {
    if id.len() != 8 || !id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(id, 16).ok()
}

/// The 32 key bytes of `base64(0x01 || key)`.
fn parse_key_bytes(encoded: &str) -> Result<[u8; 32], String> {
    let bytes = BASE64
        .decode(encoded)
        .map_err(|_| "key is not base64".to_owned())?;
    match bytes.split_first() {
        Some((&ALGORITHM_ED25519, key)) => {
            <[u8; 32]>::try_from(key).map_err(|_| format!("key has {} bytes, not 32", key.len()))
        }
        Some((algorithm, _)) => Err(format!(
            "algorithm {algorithm} is not Ed25519 (1), the only one supported"
        )),
        None => Err("key is empty".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of golang.org/x/mod/sumdb/note and of the signed_note crate.
    const NEUMANN_SIGNER: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const NEUMANN_VERIFIER: &str =
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const NEUMANN_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                                then you don't know what your problem is.\n";
    const NEUMANN_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\
        \n\
        — PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    fn root(byte: u8) -> Hash {
        [byte; 32]
    }

    fn signer(name: &str) -> (CheckpointSigner, String) {
        let (signer_text, verifier_text) = generate_key(name).unwrap();
        (
            CheckpointSigner::from_key_text(&signer_text).unwrap(),
            verifier_text,
        )
    }

    #[test]
    fn the_known_answer_of_the_note_format() {
        let signer = CheckpointSigner::from_key_text(NEUMANN_SIGNER).unwrap();
        assert_eq!(signer.origin(), "PeterNeumann");
        assert_eq!(signer.verifier_key(), NEUMANN_VERIFIER);
        assert_eq!(signer.sign_text(NEUMANN_TEXT), NEUMANN_NOTE);
        let verifier = CheckpointVerifier::from_key_text(NEUMANN_VERIFIER).unwrap();
        assert_eq!(verifier.verify_text(NEUMANN_NOTE).unwrap(), NEUMANN_TEXT);
        // It is a note, not a checkpoint.
        assert!(matches!(
            verifier.verify(NEUMANN_NOTE),
            Err(NoteError::Checkpoint(_))
        ));
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_reads_back() {
        let (signer, verifier_key) = signer("consent.example.com/audit");
        assert_eq!(signer.verifier_key(), verifier_key);
        let signed = signer.sign(42, &root(7));
        let expected_text = format!(
            "consent.example.com/audit\n42\n{}\n\n— consent.example.com/audit ",
            BASE64.encode(root(7))
        );
        assert!(signed.note.starts_with(&expected_text), "{}", signed.note);
        assert_eq!((signed.size, signed.root), (42, root(7)));
        assert_eq!(
            verify_checkpoint(&signed.note, &verifier_key).unwrap(),
            ("consent.example.com/audit".to_owned(), 42, root(7))
        );
        // Deterministic: the same checkpoint twice is the same bytes.
        assert_eq!(signer.sign(42, &root(7)), signed);
        assert_ne!(signer.sign(43, &root(7)).note, signed.note);
        let empty = signer.sign(0, &crate::audit::merkle::EMPTY_ROOT);
        assert_eq!(verify_checkpoint(&empty.note, &verifier_key).unwrap().1, 0);
    }

    #[test]
    fn the_signed_note_crate_reads_our_keys_and_notes_and_we_read_its() {
        let (signer_text, verifier_text) = generate_key("log.example").unwrap();
        let theirs = signed_note::StandardSigner::new(&signer_text).unwrap();
        let their_verifier = signed_note::StandardVerifier::new(&verifier_text).unwrap();
        let ours = CheckpointSigner::from_key_text(&signer_text).unwrap();
        let signed = ours.sign(5, &root(1));
        let parsed = signed_note::Note::from_bytes(signed.note.as_bytes()).unwrap();
        parsed
            .verify(&signed_note::VerifierList::new(vec![Box::new(
                their_verifier,
            )]))
            .unwrap();
        let mut note =
            signed_note::Note::new(checkpoint_text("log.example", 5, &root(1)).as_bytes(), &[])
                .unwrap();
        note.add_sigs(&[&theirs]).unwrap();
        assert_eq!(String::from_utf8(note.to_bytes()).unwrap(), signed.note);
        // And the crate's own key generation, read by us.
        let (their_signer, their_verifier) =
            signed_note::generate_key(&mut rand_core::OsRng, "other.example");
        let ours = CheckpointSigner::from_key_text(&their_signer).unwrap();
        assert_eq!(ours.verifier_key(), their_verifier);
        assert!(verify_checkpoint(&ours.sign(1, &root(2)).note, &their_verifier).is_ok());
    }

    #[test]
    fn a_note_by_another_key_is_refused() {
        let (signer, _) = signer("log.example");
        let (_, other_key) = signer_pair_named("log.example");
        let signed = signer.sign(3, &root(3));
        assert!(matches!(
            verify_checkpoint(&signed.note, &other_key),
            Err(NoteError::NotSigned(_))
        ));
        let (_, other_name) = signer_pair_named("other.example");
        assert!(matches!(
            verify_checkpoint(&signed.note, &other_name),
            Err(NoteError::NotSigned(_))
        ));
    }

    fn signer_pair_named(name: &str) -> (String, String) {
        generate_key(name).unwrap()
    }

    #[test]
    fn a_changed_note_is_refused() {
        let (signer, key) = signer("log.example");
        let signed = signer.sign(10, &root(9));
        // The size changed after signing.
        let resized = signed.note.replacen("\n10\n", "\n11\n", 1);
        assert!(matches!(
            verify_checkpoint(&resized, &key),
            Err(NoteError::BadSignature(_))
        ));
        // One bit of the signature flipped (past the key id, so it still names the key).
        let (text, signature_line) = signed.note.rsplit_once("— log.example ").unwrap();
        let mut signature = BASE64.decode(signature_line.trim_end()).unwrap();
        signature[20] ^= 1;
        let flipped = format!("{text}— log.example {}\n", BASE64.encode(&signature));
        assert!(matches!(
            verify_checkpoint(&flipped, &key),
            Err(NoteError::BadSignature(_))
        ));
        // A truncated signature.
        signature.truncate(40);
        let truncated = format!("{text}— log.example {}\n", BASE64.encode(&signature));
        assert!(verify_checkpoint(&truncated, &key).is_err());
        // Junk after the signature lines, or no signature block at all.
        let junk = format!("{}junk\n", signed.note);
        assert!(matches!(
            verify_checkpoint(&junk, &key),
            Err(NoteError::Note(_))
        ));
        let unsigned = checkpoint_text("log.example", 10, &root(9));
        assert!(matches!(
            verify_checkpoint(&unsigned, &key),
            Err(NoteError::Note(_))
        ));
        // A cosignature by another key is allowed.
        let (witness, _) = signer_pair_named("witness.example");
        let witness = CheckpointSigner::from_key_text(&witness).unwrap();
        let cosigned = format!(
            "{}{}",
            signed.note,
            witness
                .sign_text(&checkpoint_text("log.example", 10, &root(9)))
                .rsplit_once("\n\n")
                .unwrap()
                .1
        );
        assert_eq!(verify_checkpoint(&cosigned, &key).unwrap().1, 10);
    }

    #[test]
    fn a_signed_text_that_is_not_a_checkpoint_is_refused() {
        let (signer, key) = signer("log.example");
        let root_text = BASE64.encode(root(4));
        let refused = [
            format!("log.example\n12\n{root_text}\nextension\n"),
            "log.example\n12\n".to_owned(),
            format!("log.example\n012\n{root_text}\n"),
            format!("log.example\n-1\n{root_text}\n"),
            format!("log.example\n1e3\n{root_text}\n"),
            format!("log.example\n 12\n{root_text}\n"),
            format!("log.example\n18446744073709551616\n{root_text}\n"),
            format!("log.example\n12\n{}\n", BASE64.encode([4_u8; 31])),
            format!("log.example\n12\n{}\n", BASE64.encode([4_u8; 33])),
            format!("log.example\n12\n{}\n", &root_text[..43]),
            "log.example\n12\nnot base64!\n".to_owned(),
            format!("other.example\n12\n{root_text}\n"),
        ];
        for text in refused {
            let note = signer.sign_text(&text);
            let error = verify_checkpoint(&note, &key).unwrap_err();
            assert!(
                matches!(error, NoteError::Checkpoint(_)),
                "{text:?}: {error}"
            );
        }
        let largest =
            signer.sign_text(&format!("log.example\n18446744073709551615\n{root_text}\n"));
        assert_eq!(verify_checkpoint(&largest, &key).unwrap().1, u64::MAX);
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        let cases = [
            (
                "",
                "signer key: is not PRIVATE+KEY+<name>+<hex key id>+<base64 key>",
            ),
            (
                "PRIVATE+KEX+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
                "signer key: does not start with PRIVATE+KEY+",
            ),
            (
                "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
                "signer key: key id does not match the name and the key (a damaged or edited key file)",
            ),
            (
                "PRIVATE+KEY+PeterNeumann+c74f20+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
                "signer key: key id is not 8 hex digits",
            ),
            (
                "PRIVATE+KEY+Peter Neumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
                "key name: \"Peter Neumann\" must be non-empty, without spaces or '+'",
            ),
            (
                "PRIVATE+KEY+PeterNeumann+c74f20a3+AoEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
                "signer key: algorithm 2 is not Ed25519 (1), the only one supported",
            ),
            (
                "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXH",
                "signer key: key has 29 bytes, not 32",
            ),
            (
                "PRIVATE+KEY+PeterNeumann+c74f20a3+%%%",
                "signer key: key is not base64",
            ),
        ];
        for (text, message) in cases {
            let error = CheckpointSigner::from_key_text(text).unwrap_err();
            assert_eq!(error.to_string(), message, "{text}");
        }
        // Surrounding white space, such as a file's last newline, is not part of the key.
        assert!(CheckpointSigner::from_key_text(&format!("{NEUMANN_SIGNER}\n")).is_ok());
        assert!(CheckpointVerifier::from_key_text(&format!(" {NEUMANN_VERIFIER}\n")).is_ok());

        let cases = [
            (
                "PeterNeumann",
                "verifier key: is not <name>+<hex key id>+<base64 key>",
            ),
            (
                NEUMANN_SIGNER,
                "verifier key: is a signer (private) key; give the verifier key",
            ),
            (
                "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                "verifier key: key id does not match the name and the key",
            ),
            (
                "PeterNeumann+xyz+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                "verifier key: key id is not 8 hex digits",
            ),
            (
                "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                "key name: \"\" must be non-empty, without spaces or '+'",
            ),
            (
                "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy",
                "verifier key: key has 29 bytes, not 32",
            ),
        ];
        for (text, message) in cases {
            let error = CheckpointVerifier::from_key_text(text).unwrap_err();
            assert_eq!(error.to_string(), message, "{text}");
        }
        assert_eq!(
            generate_key("two words").unwrap_err(),
            NoteError::KeyName("two words".to_owned())
        );
    }

    #[test]
    fn checkpoint_files_are_named_by_their_size() {
        assert_eq!(checkpoint_file_name(42), "00000000000000000042.checkpoint");
        assert_eq!(
            checkpoint_file_name(u64::MAX),
            "18446744073709551615.checkpoint"
        );
        for size in [0, 1, 42, u64::MAX] {
            assert_eq!(
                parse_checkpoint_file_name(&checkpoint_file_name(size)),
                Some(size)
            );
        }
        for name in [
            "42.checkpoint",
            "00000000000000000042.checkpoint.tmp",
            "0000000000000000004x.checkpoint",
            "99999999999999999999.checkpoint",
        ] {
            assert_eq!(parse_checkpoint_file_name(name), None, "{name}");
        }
    }
}
