//! `aigw doctor`: checks, in the gateway's own environment and with its own code, what the
//! gateway needs (settings, the GitLab instance, plugins, prompts, a model endpoint) and says
//! for each step whether it works and, when not, what to fix.

mod gitlab;
mod loads;
mod model;
mod models;
mod named;
mod settings;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

/// What to check besides the environment itself.
#[derive(Default)]
pub struct DoctorOptions {
    /// The TOML settings file `aigw serve` is given, if any.
    pub config_file: Option<PathBuf>,
    /// Check the settings as `aigw serve --dev` reads them.
    pub dev: bool,
    /// A model to send a one-token test completion to.
    pub model: Option<ModelProbe>,
    /// A token GitLab sent, to verify against the instance's keys.
    pub token: Option<String>,
    /// A named model of the models file to check end to end, a tool call included.
    pub named_model: Option<String>,
}

impl std::fmt::Debug for DoctorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: only whether one was given.
        f.debug_struct("DoctorOptions")
            .field("config_file", &self.config_file)
            .field("dev", &self.dev)
            .field("model", &self.model)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("named_model", &self.named_model)
            .finish()
    }
}

/// A model as GitLab's self-hosted model configuration names it.
#[derive(Default)]
pub struct ModelProbe {
    /// The endpoint (`--model-endpoint`); `None`: the plugin's default (Bedrock's regional one).
    pub endpoint: Option<String>,
    /// `<provider>/<model>` or a bare model id (`--model-identifier`).
    pub identifier: String,
    /// The model family (`--model-name`), which selects the prompts.
    pub family: Option<String>,
    /// The model server's key, if it needs one.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for ModelProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately absent.
        f.debug_struct("ModelProbe")
            .field("endpoint", &self.endpoint)
            .field("identifier", &self.identifier)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// How one step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It works.
    Ok,
    /// It works, but something deserves a look.
    Warn,
    /// It does not work; the step says what to fix.
    Fail,
    /// Not checked (nothing to check, or an earlier step failed).
    Skip,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

/// One checked step: a verdict, what was found, and on failure or warning the fix.
#[derive(Debug, Clone)]
pub struct Step {
    /// How it went.
    pub verdict: Verdict,
    /// What was found, on one line.
    pub title: String,
    /// Further lines under it.
    pub details: Vec<String>,
    /// What to do about it.
    pub fix: Option<String>,
}

impl Step {
    fn new(verdict: Verdict, title: impl Into<String>) -> Self {
        Step { verdict, title: title.into(), details: Vec::new(), fix: None }
    }

    fn ok(title: impl Into<String>) -> Self {
        Step::new(Verdict::Ok, title)
    }

    fn skip(title: impl Into<String>) -> Self {
        Step::new(Verdict::Skip, title)
    }

    fn warn(title: impl Into<String>, fix: impl Into<String>) -> Self {
        Step { fix: Some(fix.into()), ..Step::new(Verdict::Warn, title) }
    }

    fn fail(title: impl Into<String>, fix: impl Into<String>) -> Self {
        Step { fix: Some(fix.into()), ..Step::new(Verdict::Fail, title) }
    }

    fn detail(mut self, line: impl Into<String>) -> Self {
        self.details.push(line.into());
        self
    }
}

/// A heading and its steps.
#[derive(Debug, Clone)]
pub struct Section {
    /// What is checked, e.g. `GitLab instance (AIGW_GITLAB_URL https://gitlab.example.com)`.
    pub heading: String,
    /// The steps, in the order they ran.
    pub steps: Vec<Step>,
}

impl Section {
    fn new(heading: impl Into<String>) -> Self {
        Section { heading: heading.into(), steps: Vec::new() }
    }

    fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    fn failed(&self) -> bool {
        self.steps.iter().any(|step| step.verdict == Verdict::Fail)
    }
}

/// Everything the doctor found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The sections, in the order they ran.
    pub sections: Vec<Section>,
}

impl Report {
    /// Whether any step failed (the command then exits 1).
    pub fn failed(&self) -> bool {
        self.sections.iter().any(Section::failed)
    }

    fn count(&self, verdict: Verdict) -> usize {
        self.sections.iter().flat_map(|section| &section.steps).filter(|step| step.verdict == verdict).count()
    }

    /// The report as the command prints it: plain text, one step per line, its details and fix
    /// indented under it.
    pub fn render(&self) -> String {
        let mut out = format!("aigw doctor {}\n", env!("CARGO_PKG_VERSION"));
        for section in &self.sections {
            let _ = write!(out, "\n{}\n", section.heading);
            for step in &section.steps {
                // A title of several lines (a TOML parse error) keeps its later lines under it.
                let mut title = step.title.lines();
                let _ = writeln!(out, "  {:<5} {}", step.verdict.label(), title.next().unwrap_or_default());
                for line in title.chain(step.details.iter().map(String::as_str)) {
                    let _ = writeln!(out, "        {line}");
                }
                if let Some(fix) = &step.fix {
                    let _ = writeln!(out, "        fix: {fix}");
                }
            }
        }
        let (failed, warned) = (self.count(Verdict::Fail), self.count(Verdict::Warn));
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let _ = match (failed, warned) {
            (0, 0) => writeln!(out, "\nEvery check passed."),
            (0, _) => writeln!(out, "\nEvery check passed, with {}.", plural(warned, "warning", "warnings")),
            _ => writeln!(
                out,
                "\n{} failed, {}: see the fix under each FAIL.",
                plural(failed, "check", "checks"),
                plural(warned, "warning", "warnings")
            ),
        };
        out
    }
}

/// The fix for a TLS certificate aigw does not trust; `whose` names the server ("the instance's").
fn untrusted_certificate_fix(whose: &str) -> String {
    format!(
        "if {whose} certificate comes from a private CA, add that CA to this system's trust store, or point \
         SSL_CERT_FILE at a PEM bundle holding it (read at start-up)"
    )
}

/// Run every check against `env` (the process environment, passed in so tests never set it).
pub async fn run(options: DoctorOptions, env: Vec<(String, String)>) -> Report {
    let (settings, config) = settings::check(options.config_file.as_deref(), &env, options.dev);
    let mut sections = vec![settings];
    let Some(config) = config else {
        let mut rest = Section::new("Other checks");
        rest.push(Step::skip("not run: they read the settings, which must be valid first"));
        sections.push(rest);
        return Report { sections };
    };
    let metrics = Arc::new(crate::telemetry::Metrics::default());
    sections.push(gitlab::check(&config, options.token.as_deref(), &metrics).await);
    let (plugins, prompts, loaded) = loads::check(&config).await;
    sections.push(plugins);
    sections.push(prompts);
    sections.push(models::check(&config, &env));
    sections.push(match (options.model, loaded) {
        (None, _) => {
            let mut section = Section::new("Model endpoint");
            section.push(Step::skip(
                "no model given: --model-endpoint URL --model-identifier PROVIDER/MODEL [--model-name FAMILY] \
                 sends it a one-token test completion (--model NAME checks a named model of the models file)",
            ));
            section
        }
        (Some(probe), Some(loaded)) => model::check(config.clone(), &probe, loaded, Arc::clone(&metrics)).await,
        (Some(_), None) => {
            let mut section = Section::new("Model endpoint");
            section.push(Step::skip("not run: the plugins or prompts above do not load"));
            section
        }
    });
    if let Some(name) = &options.named_model {
        let (_, _, loaded) = loads::check(&config).await;
        sections.push(match loaded {
            Some(loaded) => named::check(config, name, &env, loaded, metrics).await,
            None => {
                let mut section = Section::new(format!("Named model {name}"));
                section.push(Step::skip("not run: the plugins or prompts above do not load"));
                section
            }
        });
    }
    Report { sections }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_puts_the_fix_under_its_step_and_counts_failures() {
        let mut section = Section::new("Heading");
        section.push(Step::ok("fine").detail("a detail"));
        section.push(Step::fail("broken", "mend it"));
        section.push(Step::warn("odd", "look at it"));
        let report = Report { sections: vec![section] };
        assert!(report.failed());
        let text = report.render();
        assert!(
            text.contains("\nHeading\n  ok    fine\n        a detail\n  FAIL  broken\n        fix: mend it\n"),
            "{text}"
        );
        assert!(text.ends_with("\n1 check failed, 1 warning: see the fix under each FAIL.\n"), "{text}");
        let fine = Report { sections: vec![Section { heading: "H".into(), steps: vec![Step::ok("fine")] }] };
        assert!(!fine.failed());
        assert!(fine.render().ends_with("\nEvery check passed.\n"));
    }
}
