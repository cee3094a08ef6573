//! The words of every notification, kept in files and checked once, when they are loaded.
//!
//! Each template that applies to an outcome has four files, named
//! `{template}.{outcome}.{part}`, such as `money_added.failure.subject.txt`:
//!
//! | part | holds | values are |
//! |---|---|---|
//! | `subject.txt` | the email's subject, one line | inserted as they are; lettre encodes them |
//! | `text.txt` | the email's plain-text body | inserted as they are |
//! | `html` | the email's HTML body | HTML-escaped |
//! | `sms.txt` | the text message | inserted as they are |
//!
//! A value is written `{{ name }}` (the spaces are optional). That is the whole language: no
//! conditions, loops or filters, since every wording is its own file and every value arrives
//! formatted. A small substitution of our own is enough for that, lets loading check every
//! placeholder against the values its template is given ([`values_of`]), and keeps template
//! logic out of files an operator may override. Literal `{{` cannot be written; no message
//! needs it.
//!
//! The files ship in the crate's `templates/` folder and are built into the binary, so it runs
//! from anywhere ([`TemplateSource::Embedded`]); [`TemplateSource::Directory`] loads every file
//! from a folder instead. Either way loading fails, naming the file, when a file is missing,
//! empty, too long or not UTF-8, when a subject spans lines, when a placeholder is malformed or
//! names a value its template is not given, or when the folder holds a template file whose
//! name matches no template (a typo would otherwise be ignored). Nothing is checked later that
//! could have been checked here.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use tally_domain::notification::{Outcome, Template};

use crate::effects::{
    VALUE_AMOUNT, VALUE_CURRENCY, VALUE_FAILURE_REASON, VALUE_NAME, VALUE_PHONE_NUMBER,
    VALUE_TRANSACTION_ID,
};

/// The subject of a custom message, written by whoever asked for it.
pub const VALUE_SUBJECT: &str = "subject";
/// The body of a custom message, written by whoever asked for it.
pub const VALUE_MESSAGE: &str = "message";

/// The longest template file read. The longest shipped is under 1 KiB; 64 KiB leaves room for
/// an elaborate HTML layout while keeping a wrong path (a log file, say) from being loaded.
pub const TEMPLATE_BYTES_MAX: usize = 64 * 1024;

/// Every template with every outcome it has wording for. Account changes and custom messages
/// only ever succeed; transactions can fail.
pub const WORDINGS: [(Template, Outcome); 9] = [
    (Template::AccountOpened, Outcome::Success),
    (Template::AccountUpdated, Outcome::Success),
    (Template::MoneyAdded, Outcome::Success),
    (Template::MoneyAdded, Outcome::Failure),
    (Template::AirtimeSent, Outcome::Success),
    (Template::AirtimeSent, Outcome::Failure),
    (Template::BalanceAdjusted, Outcome::Success),
    (Template::BalanceAdjusted, Outcome::Failure),
    (Template::Custom, Outcome::Success),
];

const TRANSACTION_VALUES: [&str; 4] = [
    VALUE_NAME,
    VALUE_AMOUNT,
    VALUE_CURRENCY,
    VALUE_TRANSACTION_ID,
];

/// The values a template may refer to with an outcome: those the processor gives it (see
/// `effects`), and for custom messages those their author gives.
pub fn values_of(template: Template, outcome: Outcome) -> Vec<&'static str> {
    let mut values = match template {
        Template::AccountOpened | Template::AccountUpdated => vec![VALUE_NAME],
        Template::MoneyAdded | Template::BalanceAdjusted => TRANSACTION_VALUES.to_vec(),
        Template::AirtimeSent => [&TRANSACTION_VALUES[..], &[VALUE_PHONE_NUMBER]].concat(),
        Template::Custom => vec![VALUE_NAME, VALUE_SUBJECT, VALUE_MESSAGE],
    };
    if outcome == Outcome::Failure {
        values.push(VALUE_FAILURE_REASON);
    }
    values
}

/// The template's name in file names, as it is spelled in the event's JSON.
pub fn template_name(template: Template) -> &'static str {
    match template {
        Template::AccountOpened => "account_opened",
        Template::AccountUpdated => "account_updated",
        Template::MoneyAdded => "money_added",
        Template::AirtimeSent => "airtime_sent",
        Template::BalanceAdjusted => "balance_adjusted",
        Template::Custom => "custom",
    }
}

pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
    }
}

/// One of the four files of a wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Subject,
    Text,
    Html,
    Sms,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Subject, Part::Text, Part::Html, Part::Sms];

    /// How the part's file name ends.
    pub fn suffix(self) -> &'static str {
        match self {
            Part::Subject => "subject.txt",
            Part::Text => "text.txt",
            Part::Html => "html",
            Part::Sms => "sms.txt",
        }
    }
}

/// `money_added.failure.subject.txt`, for instance.
pub fn file_name(template: Template, outcome: Outcome, part: Part) -> String {
    let (template, outcome) = (template_name(template), outcome_name(outcome));
    format!("{template}.{outcome}.{}", part.suffix())
}

/// Where the template files come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TemplateSource {
    /// The files of the crate's `templates/` folder, built into the binary.
    #[default]
    Embedded,
    /// Every file from this folder, none from the binary: an override is complete or refused.
    Directory(PathBuf),
}

/// Why the templates could not be loaded. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template file {file} is missing")]
    Missing { file: String },

    #[error("template file {path} could not be read")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("templates folder {path} could not be listed")]
    UnlistableDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("template file {file} is longer than {TEMPLATE_BYTES_MAX} bytes")]
    TooLong { file: String },

    #[error("template file {file} is empty")]
    Empty { file: String },

    #[error("template file {file} is a subject but spans more than one line")]
    MultilineSubject { file: String },

    #[error("template file {file} has a malformed placeholder at byte {at}")]
    MalformedPlaceholder { file: String, at: usize },

    #[error("template file {file} refers to `{value}`, which its template is not given")]
    UnknownValue { file: String, value: String },

    #[error("templates folder has {file}, whose name matches no template")]
    UnexpectedFile { file: String },
}

/// A template file, parsed: literal text and the values to insert between it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Text {
    file: String,
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Value(&'static str),
}

impl Text {
    /// The file name, for errors.
    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    /// Fills the placeholders in from `values`, passing each through `escape`. `Err` names
    /// the first value the text needs that `values` lacks.
    pub(crate) fn fill(
        &self,
        values: &BTreeMap<String, String>,
        escape: fn(&str, &mut String),
    ) -> Result<String, &'static str> {
        let mut filled = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => filled.push_str(text),
                Piece::Value(name) => escape(values.get(*name).ok_or(*name)?, &mut filled),
            }
        }
        Ok(filled)
    }
}

/// The four parts of one template's wording for one outcome.
#[derive(Clone, Debug)]
pub(crate) struct Wording {
    pub(crate) subject: Text,
    pub(crate) text: Text,
    pub(crate) html: Text,
    pub(crate) sms: Text,
}

/// Every wording, loaded and checked.
#[derive(Clone, Debug)]
pub struct Templates {
    wordings: HashMap<(Template, Outcome), Wording>,
}

impl Templates {
    /// Loads and checks every file of every wording in [`WORDINGS`].
    pub fn load(source: &TemplateSource) -> Result<Templates, TemplateError> {
        if let TemplateSource::Directory(folder) = source {
            refuse_unexpected_files(folder)?;
        }
        let mut wordings = HashMap::with_capacity(WORDINGS.len());
        for (template, outcome) in WORDINGS {
            let load = |part| load_text(source, template, outcome, part);
            let wording = Wording {
                subject: load(Part::Subject)?,
                text: load(Part::Text)?,
                html: load(Part::Html)?,
                sms: load(Part::Sms)?,
            };
            wordings.insert((template, outcome), wording);
        }
        Ok(Templates { wordings })
    }

    /// The templates built into the binary.
    pub fn embedded() -> Result<Templates, TemplateError> {
        Templates::load(&TemplateSource::Embedded)
    }

    pub(crate) fn wording(&self, template: Template, outcome: Outcome) -> Option<&Wording> {
        self.wordings.get(&(template, outcome))
    }
}

fn load_text(
    source: &TemplateSource,
    template: Template,
    outcome: Outcome,
    part: Part,
) -> Result<Text, TemplateError> {
    let file = file_name(template, outcome, part);
    let raw = match source {
        TemplateSource::Embedded => embedded_file(&file)
            .ok_or_else(|| TemplateError::Missing { file: file.clone() })?
            .to_owned(),
        TemplateSource::Directory(folder) => read_file(folder, &file)?,
    };
    if raw.len() > TEMPLATE_BYTES_MAX {
        return Err(TemplateError::TooLong { file });
    }

    // The one-line parts lose the line break editors add at the end of a file.
    let raw = match part {
        Part::Subject | Part::Sms => raw.trim_end_matches(['\r', '\n']),
        Part::Text | Part::Html => raw.as_str(),
    };
    if raw.trim().is_empty() {
        return Err(TemplateError::Empty { file });
    }
    if part == Part::Subject && raw.contains(['\r', '\n']) {
        return Err(TemplateError::MultilineSubject { file });
    }
    parse(file, raw, &values_of(template, outcome))
}

/// Reads `folder/file`, refusing to read more than [`TEMPLATE_BYTES_MAX`] and one byte.
fn read_file(folder: &Path, file: &str) -> Result<String, TemplateError> {
    let path = folder.join(file);
    let unreadable = |source| TemplateError::Unreadable {
        path: path.clone(),
        source,
    };
    let opened = match std::fs::File::open(&path) {
        Ok(opened) => opened,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let file = path.display().to_string();
            return Err(TemplateError::Missing { file });
        }
        Err(error) => return Err(unreadable(error)),
    };
    let mut text = String::new();
    let limit = TEMPLATE_BYTES_MAX as u64 + 1;
    opened
        .take(limit)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    Ok(text)
}

/// Refuses a folder holding a file named like a template part that no wording uses.
fn refuse_unexpected_files(folder: &Path) -> Result<(), TemplateError> {
    let unlistable = |source| TemplateError::UnlistableDirectory {
        path: folder.to_owned(),
        source,
    };
    let expected: Vec<String> = WORDINGS
        .iter()
        .flat_map(|&(template, outcome)| Part::ALL.map(|part| file_name(template, outcome, part)))
        .collect();
    for entry in std::fs::read_dir(folder).map_err(unlistable)? {
        let name = entry.map_err(unlistable)?.file_name();
        let name = name.to_string_lossy();
        let looks_like_a_part = Part::ALL
            .iter()
            .any(|part| name.ends_with(&format!(".{}", part.suffix())));
        if looks_like_a_part && !expected.iter().any(|file| *file == name) {
            let file = name.into_owned();
            return Err(TemplateError::UnexpectedFile { file });
        }
    }
    Ok(())
}

/// Splits `raw` into literals and placeholders, each placeholder naming one of `known`.
fn parse(file: String, raw: &str, known: &[&'static str]) -> Result<Text, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = raw;
    while let Some(start) = rest.find("{{") {
        let at = raw.len() - rest.len() + start;
        let malformed = || TemplateError::MalformedPlaceholder {
            file: file.clone(),
            at,
        };
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(malformed)?;
        let name = after[..end].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(malformed());
        }
        let Some(value) = known.iter().copied().find(|known| *known == name) else {
            let value = name.to_owned();
            return Err(TemplateError::UnknownValue { file, value });
        };

        if start > 0 {
            pieces.push(Piece::Literal(rest[..start].to_owned()));
        }
        pieces.push(Piece::Value(value));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_owned()));
    }
    Ok(Text { file, pieces })
}

/// Writes `value` into HTML text or a quoted attribute without it being read as markup.
pub(crate) fn escape_html(value: &str, into: &mut String) {
    for character in value.chars() {
        match character {
            '&' => into.push_str("&amp;"),
            '<' => into.push_str("&lt;"),
            '>' => into.push_str("&gt;"),
            '"' => into.push_str("&quot;"),
            '\'' => into.push_str("&#39;"),
            _ => into.push(character),
        }
    }
}

/// Writes `value` as it is.
pub(crate) fn verbatim(value: &str, into: &mut String) {
    into.push_str(value);
}

/// Lists the shipped template files and builds each into the binary; a file listed here but
/// absent from `templates/` fails the build.
macro_rules! embedded_files {
    ($($name:literal),* $(,)?) => {
        const EMBEDDED: &[(&str, &str)] = &[
            $(($name, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/", $name))),)*
        ];
    };
}

embedded_files!(
    "account_opened.success.subject.txt",
    "account_opened.success.text.txt",
    "account_opened.success.html",
    "account_opened.success.sms.txt",
    "account_updated.success.subject.txt",
    "account_updated.success.text.txt",
    "account_updated.success.html",
    "account_updated.success.sms.txt",
    "money_added.success.subject.txt",
    "money_added.success.text.txt",
    "money_added.success.html",
    "money_added.success.sms.txt",
    "money_added.failure.subject.txt",
    "money_added.failure.text.txt",
    "money_added.failure.html",
    "money_added.failure.sms.txt",
    "airtime_sent.success.subject.txt",
    "airtime_sent.success.text.txt",
    "airtime_sent.success.html",
    "airtime_sent.success.sms.txt",
    "airtime_sent.failure.subject.txt",
    "airtime_sent.failure.text.txt",
    "airtime_sent.failure.html",
    "airtime_sent.failure.sms.txt",
    "balance_adjusted.success.subject.txt",
    "balance_adjusted.success.text.txt",
    "balance_adjusted.success.html",
    "balance_adjusted.success.sms.txt",
    "balance_adjusted.failure.subject.txt",
    "balance_adjusted.failure.text.txt",
    "balance_adjusted.failure.html",
    "balance_adjusted.failure.sms.txt",
    "custom.success.subject.txt",
    "custom.success.text.txt",
    "custom.success.html",
    "custom.success.sms.txt",
);

fn embedded_file(name: &str) -> Option<&'static str> {
    EMBEDDED
        .iter()
        .find(|(embedded, _)| *embedded == name)
        .map(|(_, text)| *text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Result<Text, TemplateError> {
        parse("test.txt".to_owned(), raw, &[VALUE_NAME, VALUE_AMOUNT])
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Copies every shipped file into a fresh folder, for tests that then break one.
    fn copied_folder() -> tempfile::TempDir {
        let folder = tempfile::tempdir().expect("a temporary folder");
        for (name, text) in EMBEDDED {
            std::fs::write(folder.path().join(name), text).expect("a copied template");
        }
        folder
    }

    #[test]
    fn every_wording_of_the_shipped_templates_loads() {
        let templates = Templates::embedded().expect("the shipped templates load");
        for (template, outcome) in WORDINGS {
            assert!(templates.wording(template, outcome).is_some());
        }
        assert_eq!(EMBEDDED.len(), WORDINGS.len() * Part::ALL.len());
    }

    #[test]
    fn the_templates_folder_loads_like_the_embedded_copy() {
        let folder = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"));
        let from_folder = Templates::load(&TemplateSource::Directory(folder)).expect("loads");
        let embedded = Templates::embedded().expect("loads");
        for (template, outcome) in WORDINGS {
            let folder_text = &from_folder
                .wording(template, outcome)
                .expect("a wording")
                .html;
            let embedded_text = &embedded.wording(template, outcome).expect("a wording").html;
            assert_eq!(folder_text, embedded_text);
        }
    }

    #[test]
    fn placeholders_are_filled_with_or_without_spaces() {
        let text = parsed("Hi {{name}}, {{ amount }} {{  name  }}!").expect("parses");
        let filled = text.fill(&values(&[("name", "Ada"), ("amount", "1.00")]), verbatim);
        assert_eq!(filled, Ok("Hi Ada, 1.00 Ada!".to_owned()));
    }

    #[test]
    fn filling_names_the_first_missing_value() {
        let text = parsed("{{ name }} {{ amount }}").expect("parses");
        assert_eq!(
            text.fill(&values(&[("name", "Ada")]), verbatim),
            Err("amount")
        );
    }

    #[test]
    fn a_placeholder_naming_a_value_its_template_is_not_given_is_refused() {
        let error = parsed("Hello {{ nmae }}").expect_err("an unknown value");
        assert!(
            matches!(&error, TemplateError::UnknownValue { value, .. } if value == "nmae"),
            "{error}"
        );
    }

    #[test]
    fn malformed_placeholders_are_refused_with_their_position() {
        for (raw, at) in [
            ("ab {{ name", 3),
            ("{{}}", 0),
            ("x {{ a b }}", 2),
            ("{{ {{ }}", 0),
        ] {
            let error = parsed(raw).expect_err(raw);
            let found = match error {
                TemplateError::MalformedPlaceholder { at, .. } => Some(at),
                _ => None,
            };
            assert_eq!(found, Some(at), "{raw}");
        }
    }

    #[test]
    fn html_escaping_covers_markup_and_quotes() {
        let mut escaped = String::new();
        escape_html(r#"<a href="x">Tom & 'Jerry'</a>"#, &mut escaped);
        assert_eq!(
            escaped,
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_missing_template_file_is_a_load_error_naming_it() {
        let folder = copied_folder();
        std::fs::remove_file(folder.path().join("airtime_sent.failure.sms.txt")).expect("removed");

        let source = TemplateSource::Directory(folder.path().to_owned());
        let error = Templates::load(&source).expect_err("a missing file");

        assert!(matches!(error, TemplateError::Missing { .. }), "{error}");
        assert!(
            error.to_string().contains("airtime_sent.failure.sms.txt"),
            "{error}"
        );
    }

    #[test]
    fn a_template_file_referring_to_an_unknown_value_is_a_load_error() {
        let folder = copied_folder();
        let path = folder.path().join("account_opened.success.text.txt");
        std::fs::write(path, "Hello {{ name }}, you have {{ amount }}").expect("written");

        let source = TemplateSource::Directory(folder.path().to_owned());
        let error = Templates::load(&source).expect_err("an unknown value");

        assert!(
            matches!(&error, TemplateError::UnknownValue { value, .. } if value == "amount"),
            "{error}"
        );
    }

    #[test]
    fn only_failure_wordings_may_name_the_failure_reason() {
        let folder = copied_folder();
        let path = folder.path().join("money_added.success.sms.txt");
        std::fs::write(path, "Added, reason {{ failureReason }}").expect("written");

        let source = TemplateSource::Directory(folder.path().to_owned());
        let error = Templates::load(&source).expect_err("an unknown value");

        assert!(
            matches!(error, TemplateError::UnknownValue { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_misspelt_template_file_in_the_folder_is_a_load_error() {
        let folder = copied_folder();
        std::fs::write(folder.path().join("money_aded.success.html"), "<p>x</p>").expect("written");
        std::fs::write(folder.path().join("README.md"), "notes are fine").expect("written");

        let source = TemplateSource::Directory(folder.path().to_owned());
        let error = Templates::load(&source).expect_err("an unexpected file");

        assert!(
            matches!(error, TemplateError::UnexpectedFile { .. }),
            "{error}"
        );
    }

    #[test]
    fn subjects_must_fit_on_one_line_and_no_part_may_be_empty() {
        let folder = copied_folder();
        let subject = folder.path().join("custom.success.subject.txt");
        std::fs::write(&subject, "Line one\nLine two\n").expect("written");
        let source = TemplateSource::Directory(folder.path().to_owned());
        let error = Templates::load(&source).expect_err("a two-line subject");
        assert!(
            matches!(error, TemplateError::MultilineSubject { .. }),
            "{error}"
        );

        std::fs::write(&subject, " \n").expect("written");
        let error = Templates::load(&source).expect_err("an empty subject");
        assert!(matches!(error, TemplateError::Empty { .. }), "{error}");
    }

    #[test]
    fn a_template_file_longer_than_the_limit_is_a_load_error() {
        let folder = copied_folder();
        let html = "<p>x</p>".repeat(TEMPLATE_BYTES_MAX / 8 + 1);
        std::fs::write(folder.path().join("custom.success.html"), html).expect("written");

        let source = TemplateSource::Directory(folder.path().to_owned());
        let error = Templates::load(&source).expect_err("a long file");

        assert!(matches!(error, TemplateError::TooLong { .. }), "{error}");
    }

    #[test]
    fn a_missing_templates_folder_is_a_load_error() {
        let source = TemplateSource::Directory(PathBuf::from("/nonexistent/tally/templates"));
        let error = Templates::load(&source).expect_err("no folder");
        assert!(
            matches!(error, TemplateError::UnlistableDirectory { .. }),
            "{error}"
        );
    }
}
