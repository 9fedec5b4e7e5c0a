//! What the simulated driver reads from the PTX it loads.
//!
//! What the simulated driver reads from the PTX it is asked to load: the target, each entry
//! point's parameters and its static shared memory. A module is accepted only when every entry
//! point has a kernel compiled for the host from the same source, with the same parameter list
//! (count and sizes): the PTX NVRTC produced and the host code then come from one signature.

/// One `.entry` of a PTX module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PtxEntry {
    pub name: String,
    /// Each `.param`'s size in bytes.
    pub param_sizes: Vec<u32>,
    /// Bytes of `.shared` memory the entry declares or uses.
    pub static_shared: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PtxModule {
    /// `.target`, e.g. `sm_90`.
    pub target: String,
    pub entries: Vec<PtxEntry>,
    /// The digest of the source the PTX came from, where it carries one (the backend's
    /// `vigil_source_digest` global: the SHA-256 of the source it gave NVRTC, in hex).
    pub source_digest: Option<String>,
}

/// The name of the global the backend's kernels carry their source's digest in.
pub(crate) const SOURCE_DIGEST: &str = "vigil_source_digest";

/// The string a `.global .b8 NAME[N] = {b, b, ...};` declaration holds (its NUL dropped).
fn source_digest(text: &str) -> Option<String> {
    let at = text.find(&format!("{SOURCE_DIGEST}["))?;
    let rest = &text[at..];
    let open = rest.find('{')?;
    let close = rest[open..].find('}')? + open;
    let bytes: Option<Vec<u8>> = rest[open + 1..close]
        .split(',')
        .map(|b| b.trim().parse().ok())
        .collect();
    let mut bytes = bytes?;
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    String::from_utf8(bytes).ok()
}

/// The size of a `.param` or `.shared` declaration: `.b8 name[N]` is N bytes, a scalar its
/// type's width.
fn declared_size(decl: &str) -> Option<u64> {
    let words: Vec<&str> = decl.split_whitespace().collect();
    let ty = words.iter().find(|w| {
        w.len() > 2
            && [".b", ".u", ".s", ".f"].iter().any(|p| w.starts_with(p))
            && w[2..].chars().all(|c| c.is_ascii_digit())
    })?;
    let bits: u64 = ty[2..].parse().ok()?;
    let last = words.last()?.trim_end_matches([',', ';']);
    let count = match last.find('[') {
        Some(open) => last[open + 1..].trim_end_matches(']').parse().ok()?,
        None => 1,
    };
    Some(bits / 8 * count)
}

fn shared_name(decl: &str) -> Option<&str> {
    let last = decl.split_whitespace().last()?.trim_end_matches(';');
    Some(last.split('[').next().unwrap_or(last))
}

pub(crate) fn parse(text: &str) -> Result<PtxModule, String> {
    let target = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(".target "))
        .map(|t| t.split([',', ' ']).next().unwrap_or(t).trim().to_owned())
        .ok_or("no .target line: not PTX")?;
    // Module-level shared variables, by name.
    let mut module_shared = Vec::new();
    let mut depth = 0i32;
    for line in text.lines() {
        let l = line.trim();
        if depth == 0 && l.starts_with(".shared") {
            if let (Some(name), Some(size)) = (shared_name(l), declared_size(l)) {
                module_shared.push((name.to_owned(), size));
            }
        }
        depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
    }
    let mut entries = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(".entry ") {
        rest = &rest[at + ".entry ".len()..];
        let open = rest.find('(').ok_or("an .entry without parameters")?;
        let name = rest[..open].trim().to_owned();
        let close = rest.find(')').ok_or("an unclosed .entry")?;
        let param_sizes = rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                declared_size(p)
                    .map(|s| s as u32)
                    .ok_or_else(|| format!("{name}: cannot read `{p}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let body_start = rest.find('{').ok_or("an .entry without a body")?;
        let mut depth = 0;
        let mut body_end = rest.len();
        for (i, c) in rest[body_start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        body_end = body_start + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &rest[body_start..body_end];
        let mut static_shared: u64 = body
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(".shared"))
            .filter_map(declared_size)
            .sum();
        static_shared += module_shared
            .iter()
            .filter(|(n, _)| body.contains(n.as_str()))
            .map(|(_, s)| s)
            .sum::<u64>();
        entries.push(PtxEntry {
            name,
            param_sizes,
            static_shared,
        });
        rest = &rest[body_end..];
    }
    if entries.is_empty() {
        return Err("no .entry in the module".into());
    }
    Ok(PtxModule {
        target,
        entries,
        source_digest: source_digest(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
.version 8.8
.target sm_90
.address_size 64

.shared .align 4 .b8 module_level[64];

.visible .entry rms_norm(
\t.param .u64 rms_norm_param_0,
\t.param .u32 rms_norm_param_4,
\t.param .f32 rms_norm_param_5,
\t.param .align 8 .b8 rms_norm_param_6[16]
)
{
\t.reg .b32 %r<4>;
\t// demoted variable
\t.shared .align 4 .b8 _ZZ9block_sumfE7partial[128];
\t.shared .align 4 .f32 _ZZ9block_sumfE5total;
\tst.shared.f32 [module_level], %f1;
\tret;
}
.visible .entry other(
)
{
\tret;
}
";

    #[test]
    fn entries_parameters_and_shared_memory_are_read() {
        let m = parse(SAMPLE).unwrap();
        assert_eq!(m.target, "sm_90");
        assert_eq!(
            m.entries,
            vec![
                PtxEntry {
                    name: "rms_norm".into(),
                    param_sizes: vec![8, 4, 4, 16],
                    static_shared: 128 + 4 + 64,
                },
                PtxEntry {
                    name: "other".into(),
                    param_sizes: vec![],
                    static_shared: 0,
                },
            ]
        );
        assert!(parse("not ptx").is_err());
    }
}
