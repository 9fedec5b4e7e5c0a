//! Serving end to end on the GPU: `vigil serve --device cuda` driven over HTTP.
//!
//! Serving end to end on the GPU: this binary's `serve --device cuda` on a free port, driven
//! over HTTP like a client would: a greedy completion that must match the CPU backend's greedy
//! tokens, a streamed chat, 32 concurrent requests (continuous batching on the device), the
//! device series and `vllm:cache_config_info` in `/metrics`, and a clean SIGTERM drain.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::report::Report;
use backend::greedy_generate;
use model::Model;

const MAX_TOKENS: usize = 24;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(model_path: &std::path::Path) -> anyhow::Result<Server> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg(model_path)
        .args(["--device", "cuda", "--host", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = server::listening_url(&line) {
                let _ = tx.send(Ok(url));
            }
            eprintln!("  serve: {line}");
            tail.push(line);
            if tail.len() > 5 {
                tail.remove(0);
            }
        }
        // The server's stderr closed: it exited (after listening, this goes unread).
        let _ = tx.send(Err(tail.join("\n")));
    });
    let mut server = Server {
        child,
        base: String::new(),
    };
    match rx.recv_timeout(Duration::from_secs(600)) {
        Ok(Ok(base)) => server.base = base,
        Ok(Err(tail)) => anyhow::bail!("vigil serve --device cuda exited:\n{tail}"),
        Err(_) => anyhow::bail!("vigil serve --device cuda did not start listening"),
    }
    Ok(server)
}

fn post(base: &str, path: &str, body: serde_json::Value) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(&format!("{base}{path}"))
        .header("content-type", "application/json")
        .send(body.to_string())?;
    Ok((resp.status().as_u16(), resp.body_mut().read_to_string()?))
}

pub(crate) fn run(model: &Model, report: &mut Report) {
    let server = match start(&model.path) {
        Ok(s) => s,
        Err(e) => return report.error("serve --device cuda", e),
    };
    let base = server.base.clone();
    let prompt = super::model::PROMPTS[0];

    // A greedy completion: the CPU backend's greedy tokens, as text.
    let expected = (|| -> anyhow::Result<String> {
        let ids = model.tokenizer.encode(prompt, true)?;
        let mut cpu = super::model::cpu(&model.config, model.weights.as_ref(), 64)?;
        let eos = &model.tokenizer.eos_token_ids;
        let mut out = greedy_generate(&mut cpu, &ids, MAX_TOKENS, eos)?;
        out.retain(|t| !eos.contains(t));
        Ok(model.tokenizer.decode(&out, true)?)
    })();
    let got = post(
        &base,
        "/v1/completions",
        serde_json::json!({"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}),
    );
    match (expected, got) {
        (Ok(want), Ok((200, body))) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let text = v["choices"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            report.check(
                "serving: greedy completion = CPU greedy",
                text == want,
                format!("{text:?} vs CPU {want:?}"),
            );
        }
        (Err(e), _) => report.error("serving: CPU reference", e),
        (_, Ok((status, body))) => report.check(
            "serving: completion",
            false,
            format!("HTTP {status}: {body}"),
        ),
        (_, Err(e)) => report.error("serving: completion", e),
    }

    match post(
        &base,
        "/v1/chat/completions",
        serde_json::json!({"messages": [{"role": "user", "content": "Name three colours."}],
                           "max_tokens": 32, "stream": true}),
    ) {
        Ok((200, body)) => {
            let chunks = body.lines().filter(|l| l.starts_with("data: {")).count();
            report.check(
                "serving: streamed chat",
                chunks > 1 && body.contains("data: [DONE]"),
                format!("{chunks} chunks, [DONE]: {}", body.contains("data: [DONE]")),
            );
        }
        Ok((status, body)) => report.check(
            "serving: streamed chat",
            false,
            format!("HTTP {status}: {body}"),
        ),
        Err(e) => report.error("serving: streamed chat", e),
    }

    let handles: Vec<_> = (0..32)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                post(
                    &base,
                    "/v1/completions",
                    serde_json::json!({"prompt": format!("Request {i}: tell me a fact about"),
                                       "max_tokens": 48, "temperature": 0.8, "seed": i}),
                )
            })
        })
        .collect();
    let ok = handles
        .into_iter()
        .map(|h| matches!(h.join(), Ok(Ok((200, _)))))
        .filter(|ok| *ok)
        .count();
    report.check(
        "serving: 32 concurrent requests",
        ok == 32,
        format!("{ok}/32 answered 200"),
    );

    match ureq::get(&format!("{base}/metrics")).call() {
        Ok(mut resp) => {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let value = |prefix: &str| -> f64 {
                text.lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            };
            let busy = value("vigil_device_step_busy_seconds_count");
            let gaps = value("vigil_device_step_gap_seconds_count");
            let generated = value("vllm:generation_tokens_total");
            let info = text
                .lines()
                .find(|l| l.starts_with("vllm:cache_config_info"))
                .unwrap_or_default()
                .to_owned();
            report.check(
                "serving: /metrics device series",
                busy > 0.0
                    && gaps > 0.0
                    && generated > 0.0
                    && !info.contains("num_gpu_blocks=\"0\""),
                format!("{busy} steps timed, {gaps} gaps, {generated} tokens; {info}"),
            );
        }
        Err(e) => report.error("serving: /metrics", e),
    }

    let pid = server.child.id().to_string();
    let mut server = server;
    let drained = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| server.child.wait().ok());
    report.check(
        "serving: SIGTERM drains and exits 0",
        drained.is_some_and(|s| s.success()),
        format!("{drained:?}"),
    );
}
