//! Structured outputs end to end with the official `openai` Python client (installed by
//! `cargo xtask test` into the folder `VIGIL_TEST_PYTHONPATH` names): JSON schemas on 20 prompts
//! at temperature 1.0 validated with `jsonschema`, `json_object`, regex, choice and Lark
//! grammars through every field name vLLM takes, whole and streamed, greedy outputs unchanged
//! where the constraint allows them, tool calls with `tool_choice` `required`, a named function
//! and `auto` read by the hermes parser, and invalid constraints refused with a 400 naming the
//! field. The checks are in `clients/structured_outputs.py`.

mod common;

use std::process::Command;

use common::{require_model, Vigil};

#[test]
fn the_openai_client_gets_outputs_that_meet_their_constraints() {
    require_model();
    let pythonpath = std::env::var("VIGIL_TEST_PYTHONPATH").expect(
        "VIGIL_TEST_PYTHONPATH names the folder with the openai and jsonschema packages: run \
         `cargo xtask test`, which installs them",
    );
    let v = Vigil::serve(&[
        "--served-model-name",
        "smol",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/structured_outputs.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(v.url(""))
        .arg("smol")
        .env("PYTHONPATH", pythonpath)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        v.log()
    );
    assert!(
        stdout.contains("all structured-output checks passed"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("ok   json_schema").count(), 20, "{stdout}");
}
