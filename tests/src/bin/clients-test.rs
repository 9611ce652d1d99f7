//! `make clients`: the official `openai` SDK and LiteLLM, installed from PyPI into a venv of
//! their own (`target/clients-venv`, pinned versions), drive aigw's model API the way clients
//! and GitLab's Duo Workflow Service do (`tests/clients/clients.py`): against the mock model
//! server speaking each provider's format, so that a tool call made by an Anthropic-, Bedrock-
//! or Ollama-shaped backend reaches an OpenAI client intact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test: failing loudly is the point")]

use aigw_mock::{MockToolCall, Reply, sigv4};
use aigw_tests::{Setup, component, workspace};
use std::path::Path;
use std::time::Duration;

/// The client versions: `openai` is the one GitLab's Duo Workflow Service was recorded with.
const PACKAGES: [&str; 2] = ["openai==2.54.0", "litellm==1.110.2"];
const KEY: &str = "sk-aigw-clients-test-0123456789";

/// The venv with the pinned clients, made once per machine (a marker names the versions).
fn venv() -> std::path::PathBuf {
    let venv = workspace().join("target/clients-venv");
    let marker = venv.join("aigw-packages");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(&PACKAGES.join(" ")) {
        let _ = std::fs::remove_dir_all(&venv);
        run("python3", &["-m", "venv", &venv.display().to_string()]);
        let pip = venv.join("bin/pip").display().to_string();
        let mut args = vec!["install", "--quiet", "--disable-pip-version-check"];
        args.extend(PACKAGES);
        run(&pip, &args);
        std::fs::write(&marker, PACKAGES.join(" ")).unwrap();
    }
    venv
}

fn run(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}: {status}");
}

#[tokio::main]
async fn main() {
    let venv = venv();
    let mut setup = Setup::default()
        .env("AWS_ACCESS_KEY_ID", sigv4::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", sigv4::SECRET_ACCESS_KEY)
        .env("AWS_REGION", "eu-central-1");
    for plugin in ["anthropic", "azure-openai", "bedrock", "mistral", "ollama"] {
        setup = setup.plugin(component(&format!("plugins/{plugin}.wasm")), &format!("{plugin}.wasm"));
    }
    let models = ["vllm", "anthropic", "bedrock", "ollama", "azure", "mistral"];
    let gateway = setup
        .models(|mock| {
            let entries = [
                ("vllm", "custom_openai/Qwen/Qwen3-Coder-30B-A3B-Instruct", mock.base_url()),
                ("anthropic", "anthropic/claude-sonnet-4-5", mock.root_url()),
                ("bedrock", "bedrock/anthropic.claude-sonnet-4-5-20250929-v1:0", mock.root_url()),
                ("ollama", "ollama/qwen3:8b", mock.root_url()),
                ("azure", "azure/gpt-4o", mock.root_url()),
                ("mistral", "mistral/mistral-large-latest", mock.mistral_url()),
            ];
            let mut file = String::new();
            for (name, identifier, endpoint) in entries {
                file.push_str(&format!(
                    "[[models]]\nname = \"{name}\"\nidentifier = \"{identifier}\"\nendpoint = \"{endpoint}\"\n\n"
                ));
            }
            file + &format!(
                "[[keys]]\nid = \"clients\"\nsha256 = \"{}\"\nmodels = [\"*\"]\n",
                aigw::models::key_sha256_hex(KEY)
            )
        })
        .start()
        .await;
    gateway.model.set_reply(Reply {
        text: "Issue 42 is open.".into(),
        tool_calls: vec![MockToolCall {
            id: "call_b6d9ca569f5c48d0b930".into(),
            name: "get_work_item".into(),
            arguments: r#"{"project_id": 1000, "work_item_iid": 42}"#.into(),
        }],
        agent: true,
        chunks: 4,
        ..Reply::default()
    });
    let script = workspace().join("tests/clients/clients.py");
    let python = venv.join("bin/python");
    let child = tokio::process::Command::new(Path::new(&python))
        .arg(&script)
        .env("AIGW_BASE_URL", format!("http://{}/v1", gateway.gateway.addr()))
        .env("AIGW_KEY", KEY)
        .env("AIGW_MODELS", models.join(","))
        // LiteLLM would fetch its model price list from the internet at import.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .kill_on_drop(true)
        .status();
    let status =
        tokio::time::timeout(Duration::from_secs(300), child).await.expect("the clients finish within 5 minutes");
    let status = status.unwrap();
    if !status.success() {
        eprintln!("clients-test: the clients failed ({status})");
        std::process::exit(1);
    }
}
