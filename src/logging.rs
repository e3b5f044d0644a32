//! Logging as etcd's flags ask for it: `--logger capnslog` (text, etcd
//! 3.4's default) or `zap` (one JSON object per line with zap's keys:
//! level, ts, caller, msg, then the event's fields), written to every target
//! of `--log-outputs` (`default` and `stderr`, `stdout`, or file paths,
//! appended to). Colour only on a terminal.

use std::fmt;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// One `--log-outputs` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stderr,
    Stdout,
    File(PathBuf),
}

/// `--log-outputs`: a comma-separated list.
pub fn parse_outputs(list: &str) -> Result<Vec<Output>, String> {
    let mut out = Vec::new();
    for target in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        out.push(match target {
            "default" | "stderr" => Output::Stderr,
            "stdout" => Output::Stdout,
            "systemd/journal" => {
                return Err(
                    "--log-outputs=systemd/journal is not supported; use stderr (journald collects it under systemd)"
                        .into(),
                )
            }
            path => Output::File(PathBuf::from(path)),
        });
    }
    if out.is_empty() {
        out.push(Output::Stderr);
    }
    out.dedup();
    Ok(out)
}

enum Sink {
    Stderr,
    Stdout,
    File(Mutex<File>),
}

/// Every output, written each event in turn.
#[derive(Clone)]
struct Sinks(Arc<Vec<Sink>>);

impl Write for &Sinks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for sink in self.0.iter() {
            // A failing output (a full disk) must not stop the others.
            let _ = match sink {
                Sink::Stderr => std::io::stderr().write_all(buf),
                Sink::Stdout => std::io::stdout().write_all(buf),
                Sink::File(f) => f.lock().unwrap_or_else(|e| e.into_inner()).write_all(buf),
            };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sinks {
    type Writer = &'a Sinks;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Installs the global subscriber. `filter` is an `EnvFilter` directive.
pub fn init(logger: &str, outputs: &[Output], filter: &str) -> Result<(), String> {
    let mut sinks = Vec::new();
    for o in outputs {
        sinks.push(match o {
            Output::Stderr => Sink::Stderr,
            Output::Stdout => Sink::Stdout,
            Output::File(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("--log-outputs: {}: {e}", path.display()))?;
                Sink::File(Mutex::new(f))
            }
        });
    }
    let ansi = outputs.iter().all(|o| match o {
        Output::Stderr => std::io::stderr().is_terminal(),
        Output::Stdout => std::io::stdout().is_terminal(),
        Output::File(_) => false,
    });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Sinks(Arc::new(sinks)));
    match logger {
        "zap" => builder.event_format(ZapJson).init(),
        _ => builder.with_ansi(ansi).init(),
    }
    Ok(())
}

/// A JSON string literal.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// An event's message and fields, as JSON values.
#[derive(Default)]
struct JsonFields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl JsonFields {
    fn add(&mut self, field: &Field, json: String, text: impl FnOnce() -> String) {
        if field.name() == "message" {
            self.message = text();
        } else {
            self.fields.push((field.name(), json));
        }
    }
}

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.add(field, quoted(&text), || text.clone());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, quoted(value), || value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field, value.to_string(), || value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.add(field, value.to_string(), || value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field, value.to_string(), || value.to_string());
    }
}

/// `--logger zap`: etcd's zap encoder's keys, one object per line.
struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let level = meta.level().as_str().to_ascii_lowercase();
        let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        write!(
            writer,
            "{{\"level\":{},\"ts\":\"{ts}\",\"caller\":{},\"msg\":{}",
            quoted(&level),
            quoted(meta.target()),
            quoted(&fields.message)
        )?;
        for (name, value) in &fields.fields {
            write!(writer, ",{}:{value}", quoted(name))?;
        }
        writeln!(writer, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_as_etcd_names_them() {
        assert_eq!(parse_outputs("default"), Ok(vec![Output::Stderr]));
        assert_eq!(
            parse_outputs("stderr,stdout,/var/log/keel.log"),
            Ok(vec![
                Output::Stderr,
                Output::Stdout,
                Output::File("/var/log/keel.log".into())
            ])
        );
        assert_eq!(parse_outputs(""), Ok(vec![Output::Stderr]));
        assert!(parse_outputs("systemd/journal").is_err());
    }
}
