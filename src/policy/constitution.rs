//! The constitution document: refusal categories with stable codes, the
//! phrases and patterns that detect them, and the content hash that every
//! verdict is signed under.
//!
//! The hash is SHA-256 over a canonical JSON rendering of the *parsed*
//! document (keys sorted, no insignificant whitespace), so reformatting the
//! TOML — whitespace, comments, key order — keeps the hash, while changing any
//! rule changes it.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::moderation::normalize::normalize_phrase;

const HASH_PREFIX: &str = "sha256:";
const STRING_ORIGIN: &str = "<string>";

/// A parsed and validated constitution.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Constitution {
    /// Human name of the constitution, e.g. `steward-default`.
    pub name: String,
    /// Version label, e.g. a date.
    pub version: String,
    /// The semantic layer's decision rule.
    #[serde(default)]
    pub semantic: SemanticRule,
    /// Refusal categories, in priority order.
    pub categories: Vec<CategoryRule>,
    /// How a guard service's answers map onto the categories (`moderation.guard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardRule>,
}

/// `[guard]`: the table from a guard's categories to this constitution's codes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuardRule {
    /// OpenAI moderation category (e.g. `violence`, `illicit/violent`) → category code, for a
    /// guard speaking OpenAI's moderation API. A flagged category not listed refuses under none.
    #[serde(default)]
    pub openai_categories: std::collections::BTreeMap<String, String>,
}

/// The semantic layer's numbers (see `moderation::semantic`): a text is
/// refused when the linear score fitted on the examples reaches `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticRule {
    /// The trained classifier that judges (`steward moderation train`), by
    /// the SHA-256 of its file: when set, `threshold`, `output_threshold` and
    /// the static band are its harmful probabilities, and `min_similarity`
    /// and the examples are not used for judging. When absent, the linear
    /// scorer fitted on the examples judges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierDigest>,
    pub threshold: f64,
    /// A refused text must also be at least this similar (cosine) to its
    /// nearest harmful example, in both directions (requests and answers).
    pub min_similarity: f64,
    /// The threshold for streamed answers, stricter than for requests: the
    /// examples are requests, and an answer on a look-alike topic (how to kill
    /// a process) reads closer to them than the request did.
    pub output_threshold: f64,
    /// Cascade: a text whose distilled (static) score is below this is
    /// allowed without running the transformer.
    pub static_allow_below: f64,
    /// Cascade: a text whose static score reaches this is refused without
    /// running the transformer.
    pub static_refuse_from: f64,
}

impl Default for SemanticRule {
    /// Without fitted numbers only texts scored clearly harmful are refused,
    /// and the transformer judges every text.
    fn default() -> Self {
        Self { classifier: None, threshold: 0.9, min_similarity: -1.0, output_threshold: 0.9, static_allow_below: -100.0, static_refuse_from: 100.0 }
    }
}

/// A trained classifier's name: the SHA-256 of its file, written `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClassifierDigest(pub [u8; 32]);

impl From<ClassifierDigest> for String {
    fn from(digest: ClassifierDigest) -> Self {
        digest.to_string()
    }
}

impl TryFrom<String> for ClassifierDigest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl ClassifierDigest {
    /// The digest's 64 hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ClassifierDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{HASH_PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for ClassifierDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for ClassifierDigest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix(HASH_PREFIX).ok_or_else(|| format!("a classifier digest starts with {HASH_PREFIX}"))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes).map_err(|e| format!("a classifier digest is sha256: and 64 hex digits: {e}"))?;
        Ok(Self(bytes))
    }
}

/// One refusal category and its detection rules.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryRule {
    /// Stable code, e.g. `S1`.
    pub code: String,
    /// Stable snake_case name, e.g. `violent_crimes`.
    pub name: String,
    /// User-facing refusal message.
    pub message: String,
    /// Literal phrases, matched on normalised text in input and output.
    #[serde(default)]
    pub phrases: Vec<String>,
    /// Regular expressions, matched on normalised input only.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Harmful requests of this category, for the semantic layer.
    #[serde(default)]
    pub examples: Vec<String>,
    /// Harmless requests that look like this category (refused by no one).
    #[serde(default)]
    pub allowed_examples: Vec<String>,
}

/// Content hash of a constitution: `sha256:` + 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConstitutionHash(String);

/// Why a constitution (or a hash string) was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConstitutionError {
    /// The file could not be read.
    #[error("cannot read constitution file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML for the constitution format (the TOML error
    /// names the offending key).
    #[error("constitution {origin} is not valid: {source}")]
    Parse {
        /// The file, or `<string>`.
        origin: String,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// The document parsed but breaks a rule; `problem` names the category
    /// code and field.
    #[error("constitution {origin}: {problem}")]
    Invalid {
        /// The file, or `<string>`.
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// A string is not of the form `sha256:<64 lowercase hex>`.
    #[error("invalid constitution hash {0:?}: expected sha256:<64 lowercase hex digits>")]
    BadHash(String),
}

/// Most examples (and allowed examples) a constitution may have: fitting the semantic
/// layer takes memory in their square and time in their cube (2,000: about 32 MB and a
/// few seconds of a core; the shipped document has 340).
pub const MAX_EXAMPLES: usize = 2000;
/// Most examples one category may have.
pub const MAX_EXAMPLES_PER_CATEGORY: usize = 500;
/// The longest example, in characters.
pub const MAX_EXAMPLE_CHARS: usize = 2000;

impl Constitution {
    /// Reads, parses and validates the constitution file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConstitutionError> {
        Self::read(path).map(|(constitution, _)| constitution)
    }

    /// [`Constitution::load`], keeping the file's text as written (comments included).
    pub fn read(path: &Path) -> Result<(Self, String), ConstitutionError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConstitutionError::Read { path: origin.clone(), source })?;
        Ok((Self::parse(&text, &origin)?, text))
    }

    /// Parses and validates a constitution from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ConstitutionError> {
        Self::parse(text, STRING_ORIGIN)
    }

    fn parse(text: &str, origin: &str) -> Result<Self, ConstitutionError> {
        let constitution: Self = toml::from_str(text).map_err(|source| ConstitutionError::Parse { origin: origin.to_owned(), source })?;
        constitution.check(origin)?;
        Ok(constitution)
    }

    /// Checks the validation rules (also applied by [`Constitution::load`] and
    /// [`Constitution::from_toml_str`]); useful for values built in code.
    pub fn validate(&self) -> Result<(), ConstitutionError> {
        self.check(STRING_ORIGIN)
    }

    fn check(&self, origin: &str) -> Result<(), ConstitutionError> {
        let fail = |problem: String| Err(ConstitutionError::Invalid { origin: origin.to_owned(), problem });
        if self.name.trim().is_empty() || self.version.trim().is_empty() {
            return fail("fields `name` and `version` must not be empty".into());
        }
        for (theirs, code) in self.guard.iter().flat_map(|g| &g.openai_categories) {
            if !self.categories.iter().any(|c| &c.code == code) {
                return fail(format!("[guard] openai_categories maps `{theirs}` to `{code}`, which no category has"));
            }
        }
        let SemanticRule { classifier: _, threshold, min_similarity, output_threshold, static_allow_below, static_refuse_from } = self.semantic;
        let numbers = [threshold, min_similarity, output_threshold, static_allow_below, static_refuse_from];
        if !numbers.iter().all(|x| x.is_finite()) {
            return fail("[semantic]: every number must be finite".into());
        }
        if static_allow_below > static_refuse_from {
            return fail("[semantic]: `static_allow_below` must not exceed `static_refuse_from`".into());
        }
        if self.categories.is_empty() {
            return fail("at least one [[categories]] entry is required".into());
        }
        let examples: usize = self.categories.iter().map(|c| c.examples.len() + c.allowed_examples.len()).sum();
        if examples > MAX_EXAMPLES {
            return fail(format!("{examples} examples; a constitution may have at most {MAX_EXAMPLES} (fitting the semantic layer grows with their square)"));
        }
        let mut codes = HashSet::new();
        let mut names = HashSet::new();
        for (i, rule) in self.categories.iter().enumerate() {
            let code = &rule.code;
            if code.trim().is_empty() {
                return fail(format!("categories[{i}]: field `code` must not be empty"));
            }
            if !codes.insert(code.as_str()) {
                return fail(format!("category {code:?}: `code` is used by more than one category"));
            }
            if !is_snake_case(&rule.name) {
                return fail(format!("category {code:?}: `name` {:?} must be snake_case", rule.name));
            }
            if !names.insert(rule.name.as_str()) {
                return fail(format!("category {code:?}: `name` {:?} is already used", rule.name));
            }
            if rule.message.trim().is_empty() {
                return fail(format!("category {code:?}: field `message` must not be empty"));
            }
            if let Some(j) = rule.phrases.iter().position(|p| normalize_phrase(p).is_empty()) {
                return fail(format!("category {code:?}: `phrases[{j}]` is empty after normalisation"));
            }
            if let Some(j) = rule.examples.iter().chain(&rule.allowed_examples).position(|e| e.trim().is_empty()) {
                return fail(format!("category {code:?}: example {j} is empty"));
            }
            let examples = rule.examples.len() + rule.allowed_examples.len();
            if examples > MAX_EXAMPLES_PER_CATEGORY {
                return fail(format!(
                    "category {code:?}: {examples} examples; at most {MAX_EXAMPLES_PER_CATEGORY} per category (examples and allowed_examples)"
                ));
            }
            if let Some(j) = rule.examples.iter().chain(&rule.allowed_examples).position(|e| e.chars().count() > MAX_EXAMPLE_CHARS) {
                return fail(format!("category {code:?}: example {j} is longer than {MAX_EXAMPLE_CHARS} characters"));
            }
            for pattern in &rule.patterns {
                if let Err(e) = regex::Regex::new(pattern) {
                    return fail(format!("category {code:?}: pattern {pattern:?} in `patterns` does not compile: {e}"));
                }
            }
        }
        Ok(())
    }

    /// Canonical JSON of the document: keys sorted, no insignificant whitespace.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let Self { name, version, semantic, categories, guard } = self;
        let categories = categories.iter().map(CategoryRule::canonical_value).collect();
        let SemanticRule { classifier, threshold, min_similarity, output_threshold, static_allow_below, static_refuse_from } = semantic;
        // Named only when set, so a document without a classifier keeps the hash it always had.
        let classifier = classifier.iter().map(|c| ("classifier", Value::from(c.to_string())));
        let semantic = object(
            classifier
                .chain([
                    ("min_similarity", Value::from(*min_similarity)),
                    ("output_threshold", Value::from(*output_threshold)),
                    ("static_allow_below", Value::from(*static_allow_below)),
                    ("static_refuse_from", Value::from(*static_refuse_from)),
                    ("threshold", Value::from(*threshold)),
                ])
                .collect(),
        );
        // Named only when set, so a document without a guard table keeps the hash it always had.
        let guard = guard.iter().map(|g| {
            let table = g.openai_categories.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>();
            ("guard", object(vec![("openai_categories", Value::Object(table))]))
        });
        object(
            [
                ("categories", Value::Array(categories)),
                ("name", Value::from(name.as_str())),
                ("semantic", semantic),
                ("version", Value::from(version.as_str())),
            ]
            .into_iter()
            .chain(guard)
            .collect(),
        )
        .to_string()
        .into_bytes()
    }

    /// SHA-256 over [`Constitution::canonical_bytes`].
    pub fn hash(&self) -> ConstitutionHash {
        let digest = Sha256::digest(self.canonical_bytes());
        ConstitutionHash(format!("{HASH_PREFIX}{}", hex::encode(digest)))
    }
}

impl CategoryRule {
    fn canonical_value(&self) -> Value {
        // Destructured so that a new field cannot be silently left out of the hash.
        let Self { code, name, message, phrases, patterns, examples, allowed_examples } = self;
        let strings = |items: &[String]| Value::from(items.to_vec());
        object(vec![
            ("allowed_examples", strings(allowed_examples)),
            ("code", Value::from(code.as_str())),
            ("examples", strings(examples)),
            ("message", Value::from(message.as_str())),
            ("name", Value::from(name.as_str())),
            ("patterns", strings(patterns)),
            ("phrases", strings(phrases)),
        ])
    }
}

/// Builds a JSON object with its keys inserted in sorted order, so the output
/// is sorted whether or not serde_json's `preserve_order` feature is enabled.
fn object(mut entries: Vec<(&str, Value)>) -> Value {
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let map: Map<String, Value> = entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Value::Object(map)
}

fn is_snake_case(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl ConstitutionHash {
    /// Parses `sha256:` followed by exactly 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, ConstitutionError> {
        let valid = s.strip_prefix(HASH_PREFIX).is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(ConstitutionError::BadHash(s.to_owned()))
        }
    }

    /// The hash as `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConstitutionHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const BASE: &str = r#"
name = "t"
version = "1"
[[categories]]
code = "S1"
name = "violent_crimes"
message = "No."
phrases = ["build a bomb"]
patterns = ['\d{3}']
"#;

    const REFORMATTED: &str = r#"
# Same rules, different layout.
version="1"   # key order changed
name="t"

[[categories]]
patterns=[ '\d{3}' ]
message =   "No."
phrases = [
  "build a bomb",   # trailing comma and comments
]
name="violent_crimes"
code="S1"
"#;

    fn invalid(toml: &str) -> String {
        match Constitution::from_toml_str(toml) {
            Ok(_) => String::from("<accepted>"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn too_many_or_too_long_examples_are_refused_naming_the_limit() {
        let with = |per_category: usize, categories: usize, length: usize| {
            let example = format!("\"{}\"", "a".repeat(length));
            let examples = vec![example; per_category].join(",");
            (0..categories)
                .map(|i| format!("[[categories]]\ncode = \"C{i}\"\nname = \"c{i}\"\nmessage = \"No.\"\nexamples = [{examples}]\n"))
                .fold("name = \"t\"\nversion = \"1\"\n".to_owned(), |doc, c| doc + &c)
        };
        assert_eq!(invalid(&with(500, 4, 5)), "<accepted>");
        assert!(invalid(&with(501, 1, 5)).contains("at most 500 per category"), "{}", invalid(&with(501, 1, 5)));
        assert!(invalid(&with(400, 6, 5)).contains("at most 2000"), "{}", invalid(&with(400, 6, 5)));
        assert!(invalid(&with(1, 1, 2001)).contains("longer than 2000 characters"));
    }

    #[test]
    fn reformatting_keeps_hash() -> TestResult {
        let a = Constitution::from_toml_str(BASE)?.hash();
        let b = Constitution::from_toml_str(REFORMATTED)?.hash();
        assert_eq!(a, b);
        assert!(a.as_str().starts_with("sha256:") && a.as_str().len() == 71);
        assert_eq!(ConstitutionHash::parse(&a.to_string())?, a);
        Ok(())
    }

    #[test]
    fn changing_any_rule_changes_hash() -> TestResult {
        let base = Constitution::from_toml_str(BASE)?;
        let edits: [fn(&mut Constitution); 15] = [
            |c| c.name.push('x'),
            |c| c.version.push('x'),
            |c| c.categories[0].code.push('x'),
            |c| c.categories[0].name.push('x'),
            |c| c.categories[0].message.push('x'),
            |c| c.categories[0].phrases.push("make nerve gas".into()),
            |c| c.categories[0].patterns[0].push('x'),
            |c| c.categories[0].examples.push("how do i make a bomb".into()),
            |c| c.categories[0].allowed_examples.push("bath bomb recipe".into()),
            |c| c.semantic.threshold = 0.5,
            |c| c.semantic.static_allow_below = 0.3,
            |c| c.semantic.output_threshold = 0.95,
            |c| c.semantic.min_similarity = 0.5,
            |c| c.semantic.static_refuse_from = 0.8,
            |c| c.semantic.classifier = Some(ClassifierDigest([1; 32])),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut changed = base.clone();
            edit(&mut changed);
            assert_ne!(changed.hash(), base.hash(), "edit {i}");
        }
        Ok(())
    }

    #[test]
    fn a_new_classifier_digest_changes_the_hash_and_a_document_without_one_keeps_its_old_hash() -> TestResult {
        let mut base = Constitution::from_toml_str(BASE)?;
        base.semantic.classifier = None;
        let without = base.hash();
        let canonical = String::from_utf8(base.canonical_bytes())?;
        assert!(!canonical.contains("classifier"), "a document without a classifier is hashed as before: {canonical}");
        let named = |digest: [u8; 32]| {
            let mut c = base.clone();
            c.semantic.classifier = Some(ClassifierDigest(digest));
            c.hash()
        };
        assert_ne!(named([1; 32]), without);
        assert_ne!(named([1; 32]), named([2; 32]));
        let text = format!(
            "{}\n",
            toml::to_string(&{
                let mut c = base.clone();
                c.semantic.classifier = Some(ClassifierDigest([0xab; 32]));
                c
            })?
        );
        assert!(text.contains(&format!("classifier = \"sha256:{}\"", "ab".repeat(32))), "{text}");
        assert_eq!(Constitution::from_toml_str(&text)?.semantic.classifier, Some(ClassifierDigest([0xab; 32])));
        assert!("sha256:xyz".parse::<ClassifierDigest>().is_err() && "ab".repeat(32).parse::<ClassifierDigest>().is_err());
        Ok(())
    }

    #[test]
    fn canonical_bytes_are_sorted_and_compact() -> TestResult {
        let c = Constitution::from_toml_str(BASE)?;
        let expected = concat!(
            r#"{"categories":[{"allowed_examples":[],"code":"S1","examples":[],"message":"No.","name":"violent_crimes","#,
            r#""patterns":["\\d{3}"],"phrases":["build a bomb"]}],"name":"t","semantic":{"min_similarity":-1.0,"output_threshold":0.9,"static_allow_below":-100.0,"static_refuse_from":100.0,"threshold":0.9},"version":"1"}"#,
        );
        assert_eq!(String::from_utf8(c.canonical_bytes())?, expected);
        Ok(())
    }

    #[test]
    fn validation_errors_name_the_problem() {
        let one = |body: &str| format!("name = \"t\"\nversion = \"1\"\n{body}");
        let cat = |code: &str, name: &str, extra: &str| format!("[[categories]]\ncode = \"{code}\"\nname = \"{name}\"\nmessage = \"m\"\n{extra}\n");
        let cases = [
            (one("categories = []"), "at least one"),
            (one(""), "missing field `categories`"),
            (one(&(cat("S1", "a", "") + &cat("S1", "b", ""))), "\"S1\": `code` is used"),
            (one(&(cat("S1", "a", "") + &cat("S2", "a", ""))), "\"S2\": `name` \"a\" is already used"),
            (one(&cat("S1", "Bad-Name", "")), "\"S1\": `name` \"Bad-Name\" must be snake_case"),
            (one(&cat("", "a", "")), "field `code` must not be empty"),
            (one(&cat("S1", "a", "phrases = [\"ok\", \" \\u3000 \"]")), "\"S1\": `phrases[1]` is empty"),
            (one(&cat("S1", "a", "patterns = ['(unclosed']")), "\"S1\": pattern \"(unclosed\""),
            (one(&cat("S1", "a", "severity = 3")), "unknown field `severity`"),
            (one(&cat("S1", "a", "").replace("\"m\"", "\" \"")), "\"S1\": field `message`"),
        ];
        for (toml, needle) in cases {
            let msg = invalid(&toml);
            assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
        }
    }

    #[test]
    fn load_names_the_file_and_reads_the_default() -> TestResult {
        let missing = Path::new("/nonexistent/constitution.toml");
        let err = Constitution::load(missing).err().ok_or("missing file loaded")?;
        assert!(err.to_string().contains("/nonexistent/constitution.toml"));
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/constitution.toml");
        let c = Constitution::load(&path)?;
        assert_eq!(c.categories.len(), 16);
        let reparsed = Constitution::from_toml_str(&toml::to_string(&c)?)?;
        assert_eq!(reparsed.hash(), c.hash());
        Ok(())
    }

    #[test]
    fn hash_parse_is_strict() {
        let hex = "ab".repeat(32);
        assert!(ConstitutionHash::parse(&format!("sha256:{hex}")).is_ok());
        for bad in [hex.clone(), format!("sha256:{}", hex.to_uppercase()), format!("sha256:{hex}0"), format!("md5:{hex}")] {
            assert!(ConstitutionHash::parse(&bad).is_err(), "{bad}");
        }
    }
}
