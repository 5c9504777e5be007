//! A TOML document read into a serde type with every offending key named
//! at once: serde stops at the first value of the wrong form or unknown
//! key, so an operator would fix a file one error per start. [`parse`]
//! reports the first as the text deserializer does (with its line), then
//! finds the others on the parsed document (`wrong_forms`). Shared by the
//! gateway's and the upstream-app's config loaders.

use serde::de::DeserializeOwned;

/// `text` read into `T`; on failure, one line per offending key
/// (`config key `path`: message`), the first with its line in the file.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let first = match serde_path_to_error::deserialize(toml::Deserializer::new(text)) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let (path, message) = (first.path().to_string(), first.into_inner().to_string());
    let mut problems = vec![describe(&path, &message)];
    let others = wrong_forms::<T>(text).into_iter();
    problems.extend(
        others
            .filter(|(p, m)| !(*p == path && message.contains(m.as_str())))
            .map(|(p, m)| describe(&p, &m)),
    );
    Err(problems.join("\n"))
}

/// `config key `path`: message`, or the message alone for the whole file.
fn describe(path: &str, message: &str) -> String {
    match path {
        "" | "." => message.to_owned(),
        p => format!("config key `{p}`: {message}"),
    }
}

/// Most this many wrong-form keys are reported from one file.
const MAX_WRONG_FORMS: usize = 50;

/// Every key of `text` whose value has the wrong form, as (key path,
/// message), in the order the deserializer meets them: serde stops at the first error, so each found
/// key is taken out of the document (an element of an array takes its whole
/// array, an unknown key itself) and the rest is read again, until it reads
/// or nothing more can be taken out. A key taken out falls back to its
/// default, so no error is reported that only the removal caused: a
/// `missing field` after a removal (the key taken out was required) takes
/// out the table that needs it, unreported, and the search reads on, so
/// the sections after it are still searched. Empty for a file that is not
/// TOML at all (its syntax error is the one answer).
fn wrong_forms<T: DeserializeOwned>(text: &str) -> Vec<(String, String)> {
    let Ok(mut doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    // Each round takes something out of the document: bounded by its size,
    // and by this.
    let mut rounds = 0;
    while found.len() < MAX_WRONG_FORMS && rounds < 4 * MAX_WRONG_FORMS {
        rounds += 1;
        let e = match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(doc.clone())) {
            Ok(_) => break,
            Err(e) => e,
        };
        // A document's errors end in "\nin `key`" (the path says it).
        let full = e.inner().to_string();
        let message = full.split_once("\nin `").map_or(full.as_str(), |(m, _)| m).to_owned();
        if !found.is_empty() && message.starts_with("missing field") {
            let table = offending_key(e.path());
            if table.is_empty() || !remove_key(&mut doc, &table) {
                break;
            }
            continue;
        }
        let key = offending_key(e.path());
        found.push((e.path().to_string(), message));
        if !remove_key(&mut doc, &key) {
            break;
        }
    }
    found
}

/// The table keys leading to what must be taken out for an error at `path`
/// (an unknown key's path names it): the path up to its first array index
/// (the array's own key).
fn offending_key(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    let mut keys = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } => keys.push(key.clone()),
            Segment::Seq { .. } => return keys,
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    keys
}

/// Take the key at `keys` out of `doc`; false if there is no such key.
fn remove_key(doc: &mut toml::Table, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut table = doc;
    for key in parents {
        match table.get_mut(key) {
            Some(toml::Value::Table(t)) => table = t,
            _ => return false,
        }
    }
    table.remove(last).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        name: String,
        #[serde(default)]
        section: Section,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Section {
        port: u16,
        hosts: Vec<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct WithRequired {
        #[serde(default)]
        pools: std::collections::BTreeMap<String, Pool>,
        #[serde(default)]
        section: Section,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Pool {
        backends: Vec<u16>,
    }

    #[test]
    fn a_required_key_taken_out_does_not_end_the_search() {
        // `backends` is required: taking its wrong value out leaves its
        // pool without it; the sections after it are still searched.
        let err = parse::<WithRequired>("[pools.a]\nbackends = [\"x\"]\n[section]\nport = \"y\"\n").unwrap_err();
        for key in ["pools.a.backends[0]", "section.port"] {
            assert_eq!(err.matches(&format!("config key `{key}`")).count(), 1, "{key}: {err}");
        }
        assert!(!err.contains("missing field"), "{err}");
    }

    #[test]
    fn a_good_file_reads() {
        let f: File = parse("name = \"a\"\n[section]\nport = 1\nhosts = [\"x\"]\n").unwrap();
        assert_eq!(f.section.port, 1);
    }

    #[test]
    fn every_offending_key_is_named_once() {
        let err = parse::<File>("name = 1\nextra = 2\n[section]\nport = \"x\"\nhosts = [1]\nmore = 3\n").unwrap_err();
        for key in ["name", "extra", "section.port", "section.hosts[0]", "section.more"] {
            assert_eq!(err.matches(&format!("config key `{key}`")).count(), 1, "{key}: {err}");
        }
        assert_eq!(err.matches("config key `").count(), 5, "{err}");
        // The first is the text deserializer's, with its line.
        assert!(
            err.starts_with("config key `name`: TOML parse error at line 1"),
            "{err}"
        );
    }

    #[test]
    fn the_wrong_form_search_ends() {
        // More wrong keys than are reported: the list is cut, the search ends.
        let mut text = String::from("[section]\n");
        for i in 0..(MAX_WRONG_FORMS + 10) {
            text.push_str(&format!("k{i} = 1\n"));
        }
        let err = parse::<File>(&text).unwrap_err();
        let reported = err.matches("unknown field `k").count();
        assert!(
            (MAX_WRONG_FORMS..=MAX_WRONG_FORMS + 1).contains(&reported),
            "{reported}: {err}"
        );
    }

    #[test]
    fn a_syntax_error_is_the_one_answer() {
        let err = parse::<File>("[section\nport = \"x\"\n").unwrap_err();
        assert!(
            err.contains("invalid table header") && !err.contains("config key"),
            "{err}"
        );
    }
}
