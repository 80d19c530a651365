//! `cairn serve --config FILE` (or `CAIRN_CONFIG`): serve options from a
//! TOML file, under the names of their flags.
//!
//! ```toml
//! data = "/var/lib/cairn"
//! listen = "127.0.0.1:7700"
//! idle-ms = 5000
//! allow-http = ["https://api.example.com/"]
//! log-format = "json"
//! ```
//!
//! A key is a `serve` flag without its dashes (`idle-ms` for `--idle-ms`);
//! a flag that takes no value is `true` or `false`; a repeatable flag takes
//! an array. A flag given on the command line, or its environment variable,
//! wins over the file. An unknown key, a table, or a value of the wrong
//! kind is refused with the file, the line and the key. Paths are relative
//! to the current directory, as on the command line.
//!
//! How: the file's keys become the flags they name, appended to the command
//! line for every option the command line did not set (clap's
//! `ValueSource`), so that clap parses and checks both alike.

use clap::parser::ValueSource;
use clap::ArgAction;
use std::ffi::OsString;
use std::path::Path;

/// Options that are not serve options, though clap lists them with serve's.
const NOT_IN_FILE: &[&str] = &["config", "help", "version", "server", "token", "ca-cert"];

/// `argv` with the options of `serve --config FILE` added; unchanged for
/// any other command, or when clap will refuse `argv` anyway (it then says why).
pub fn expand(cmd: &clap::Command, argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Ok(matches) = cmd.clone().try_get_matches_from(&argv) else { return Ok(argv) };
    let Some(("serve", serve_matches)) = matches.subcommand() else { return Ok(argv) };
    let Some(file) = serve_matches.get_one::<std::path::PathBuf>("config") else { return Ok(argv) };
    let serve = cmd.find_subcommand("serve").expect("cairn has a serve command");
    let extra = file_args(serve, file, |id| {
        matches!(serve_matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
    })?;
    let mut argv = argv;
    argv.extend(extra);
    Ok(argv)
}

/// The flags `file` stands for, skipping options for which `set_already` is true.
fn file_args(serve: &clap::Command, file: &Path, set_already: impl Fn(&str) -> bool) -> Result<Vec<OsString>, String> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read the configuration file {shown}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| format!(", line {}", line_of(&text, s.start))).unwrap_or_default();
        format!("the configuration file {shown} is not valid TOML{line}: {}", e.message())
    })?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let at = format!("{shown}, line {}", key_line(&text, key));
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| {
                let known: Vec<&str> =
                    serve.get_arguments().filter_map(|a| a.get_long()).filter(|l| !NOT_IN_FILE.contains(l)).collect();
                let hint = known.iter().find(|k| k.replace('-', "_") == key.replace('-', "_")).map(|k| format!(" (did you mean '{k}'?)")).unwrap_or_default();
                format!("{at}: unknown key '{key}'{hint}: the keys are the flags of `cairn serve` without their dashes: {}", known.join(", "))
            })?;
        if set_already(arg.get_id().as_str()) {
            continue;
        }
        let flag = format!("--{key}");
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(b)) => {
                if *b {
                    out.push(flag.into());
                }
            }
            (ArgAction::SetTrue, _) => return Err(format!("{at}: '{key}' is a switch: write {key} = true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    out.push(flag.clone().into());
                    out.push(scalar(item).ok_or_else(|| format!("{at}: '{key}' takes an array of strings or numbers"))?.into());
                }
            }
            (_, v) => {
                let v = scalar(v).ok_or_else(|| match v {
                    toml::Value::Array(_) => format!("{at}: '{key}' takes one value, not an array"),
                    _ => format!("{at}: '{key}' takes a string or a number"),
                })?;
                // Check the value alone, so that a bad one is reported with its line.
                let alone = serve.clone().no_binary_name(true).try_get_matches_from([flag.clone(), v.clone()]);
                if let Err(e) = alone {
                    if matches!(e.kind(), clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue) {
                        let why = e.to_string();
                        let why = why.lines().next().unwrap_or("").trim_start_matches("error: ");
                        return Err(format!("{at}: '{key}' = {v}: {why}"));
                    }
                }
                out.push(flag.into());
                out.push(v.into());
            }
        }
    }
    Ok(out)
}

/// A string, integer or float as the command line would give it.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line where top-level `key` is set (`key =`, possibly quoted).
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix(key).or_else(|| l.strip_prefix(&format!("\"{key}\""))).or_else(|| l.strip_prefix(&format!("'{key}'")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve() -> clap::Command {
        clap::Command::new("serve")
            .arg(clap::Arg::new("idle_ms").long("idle-ms").value_parser(clap::value_parser!(u64)))
            .arg(clap::Arg::new("no_fsync").long("no-fsync").action(ArgAction::SetTrue))
            .arg(clap::Arg::new("allow_http").long("allow-http").action(ArgAction::Append))
    }

    fn args(text: &str) -> Result<Vec<String>, String> {
        let dir = std::env::temp_dir().join(format!("cairn-config-test-{}", crate::service::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cairn.toml");
        std::fs::write(&file, text).unwrap();
        let r = file_args(&serve(), &file, |_| false).map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect());
        std::fs::remove_dir_all(&dir).unwrap();
        r.map_err(|e| e.replace(&file.display().to_string(), "FILE"))
    }

    #[test]
    fn keys_become_the_flags_they_name() {
        let got = args("idle-ms = 50\nno-fsync = true\nallow-http = [\"http://a/\", \"http://b/\"]\n").unwrap();
        assert_eq!(got, ["--allow-http", "http://a/", "--allow-http", "http://b/", "--idle-ms", "50", "--no-fsync"]);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let e = args("idle-ms = 50\n\nidle_ms = 3\n").unwrap_err();
        assert!(e.starts_with("FILE, line 3: unknown key 'idle_ms' (did you mean 'idle-ms'?)"), "{e}");
    }

    #[test]
    fn a_bad_value_is_refused_with_its_line() {
        let e = args("# comment\nidle-ms = \"soon\"\n").unwrap_err();
        assert!(e.starts_with("FILE, line 2: 'idle-ms' = soon: "), "{e}");
        let e = args("no-fsync = 1\n").unwrap_err();
        assert!(e.starts_with("FILE, line 1: 'no-fsync' is a switch"), "{e}");
    }
}
