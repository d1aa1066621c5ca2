//! Logging: text for people, JSON for log pipelines. Logs go to stderr so
//! command output on stdout stays clean for scripts.
//!
//! Log lines carry what pods and registries wrote (pod names, image
//! strings, registry errors): a newline there would forge a log line, an
//! escape sequence would rewrite the terminal of whoever reads the log.
//! Every line is escaped on its way out, whatever the format and whoever
//! logged it, so no call site has to remember.

use std::borrow::Cow;
use std::io::{self, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether `filter` is a filter tracing reads (`info`, `archway=debug`).
pub fn check_filter(filter: &str) -> Result<(), String> {
    EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| format!("not a log filter ({e}); e.g. info or archway=debug"))
}

pub fn init(format: LogFormat, filter: &str) {
    use tracing_subscriber::util::SubscriberInitExt;
    // try_init: tests and embedders may have set a subscriber already.
    let _ = subscriber(format, filter, io::stderr).try_init();
}

/// The subscriber `init` installs, writing to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // `check_filter` refused a bad one at start; a caller that skipped it
    // still gets logs.
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours are escape sequences too; they would be escaped below.
        .with_ansi(false)
        .with_writer(Escaping {
            format,
            inner: writer,
        });
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// A writer that escapes control characters in each formatted line.
struct Escaping<W> {
    format: LogFormat,
    inner: W,
}

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for Escaping<W> {
    type Writer = Escaping<W::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        Escaping {
            format: self.format,
            inner: self.inner.make_writer(),
        }
    }
}

impl<W: Write> Write for Escaping<W> {
    /// The formatter hands over one whole line per event.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let escaped = escape_line(&text, self.format);
        self.inner.write_all(escaped.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Characters that change how a line reads: C0 and C1 controls, DEL, and
/// the bidirectional overrides and isolates that reorder text.
fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `line` with every hostile character escaped, except its final newline.
/// Text gets Rust-style escapes (`\n`, `\x1b`, `\u{202e}`); JSON gets
/// `\u001b`, which is only valid inside a string, where the JSON formatter
/// puts every value.
pub fn escape_line(line: &str, format: LogFormat) -> Cow<'_, str> {
    let (body, end) = match line.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (line, ""),
    };
    if !body.chars().any(is_hostile) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in body.chars() {
        if !is_hostile(c) {
            out.push(c);
            continue;
        }
        match (format, c) {
            (LogFormat::Json, c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            (LogFormat::Text, '\n') => out.push_str("\\n"),
            (LogFormat::Text, '\r') => out.push_str("\\r"),
            (LogFormat::Text, '\t') => out.push_str("\\t"),
            (LogFormat::Text, c) if (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            (LogFormat::Text, c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out.push_str(end);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat, pod: &str) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = subscriber(format, "info", move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(pod = %pod, image = ?pod, "review of {pod}");
            tracing::warn!(reason = pod, "bad admission request");
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn pod_names_cannot_forge_lines_or_drive_terminals() {
        let hostile = "web\n2030-01-01T00:00:00Z  INFO forged\r\x1b[2J\x1b]0;owned\x07\u{9b}31m\u{202e}gnp.exe\x7f";
        for format in [LogFormat::Text, LogFormat::Json] {
            let out = logged(format, hostile);
            assert_eq!(out.lines().count(), 2, "{format:?}: {out}");
            assert!(out.ends_with('\n'));
            let body = out.replace('\n', "");
            assert!(!body.chars().any(is_hostile), "{format:?}: {body:?}");
            if matches!(format, LogFormat::Json) {
                for line in out.lines() {
                    let value: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert!(
                        value["pod"].as_str().unwrap_or_default().contains("forged")
                            || value["reason"]
                                .as_str()
                                .unwrap_or_default()
                                .contains("forged"),
                        "{line}"
                    );
                }
            } else {
                assert!(out.contains(r"web\n2030"), "{out}");
                assert!(out.contains(r"\x1b[2J"), "{out}");
            }
        }
    }

    #[test]
    fn ordinary_lines_pass_unchanged() {
        assert!(matches!(
            escape_line("a b=c\n", LogFormat::Text),
            Cow::Borrowed(_)
        ));
        assert_eq!(escape_line("a\tb\n", LogFormat::Text), "a\\tb\n");
        assert_eq!(
            escape_line("\"a\u{1b}\"\n", LogFormat::Json),
            "\"a\\u001b\"\n"
        );
    }
}
