//! Host globs (`*.myzaker.com`, `p*-juejin.byteimg.com`) and proxy prefixes
//! (`https://*.workers.dev/?`): the matching that `upstream.allow_hosts`, `rewrite.hosts` and
//! `rewrite.proxies` share.

/// A host glob: labels separated by `.`; a label `*` stands for one or more labels, and `*` inside a
/// label for any run of characters within it. Matching ignores ASCII case.
#[derive(Clone, Debug)]
pub struct HostGlob {
    labels: Vec<String>,
}

impl HostGlob {
    /// Parses a glob; errors say what is wrong with it.
    pub fn new(glob: &str) -> Result<HostGlob, &'static str> {
        if glob.is_empty() {
            return Err("empty");
        }
        let labels: Vec<String> = glob.split('.').map(|l| l.to_ascii_lowercase()).collect();
        for l in &labels {
            if l.is_empty() {
                return Err("empty label");
            }
            if l.contains("**") {
                return Err("** is not a glob here; use * for one or more labels");
            }
            if !l
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*' | b':'))
            {
                return Err("hosts use letters, digits, - and _, with * as the wildcard");
            }
        }
        Ok(HostGlob { labels })
    }

    /// True when `host` matches (case-insensitive; a trailing dot is ignored).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        match_labels(&self.labels, &labels)
    }
}

fn match_labels(glob: &[String], host: &[&str]) -> bool {
    match glob.split_first() {
        None => host.is_empty(),
        Some((g, rest)) if g == "*" => (1..=host.len()).any(|n| match_labels(rest, &host[n..])),
        Some((g, rest)) => match host.split_first() {
            Some((h, hrest)) => {
                match_label(g.as_bytes(), h.as_bytes()) && match_labels(rest, hrest)
            }
            None => false,
        },
    }
}

/// `*` within one label matches any run of characters.
fn match_label(g: &[u8], h: &[u8]) -> bool {
    match g.split_first() {
        None => h.is_empty(),
        Some((b'*', rest)) => (0..=h.len()).any(|n| match_label(rest, &h[n..])),
        Some((c, rest)) => h.first() == Some(c) && match_label(rest, &h[1..]),
    }
}

/// True when any glob in the list matches `host`.
pub fn any_glob_matches(globs: &[HostGlob], host: &str) -> bool {
    globs.iter().any(|g| g.matches(host))
}

/// Compiles a list of globs already validated by [`super::Config::load`]; invalid ones are skipped.
pub fn compile_globs(globs: &[String]) -> Vec<HostGlob> {
    globs.iter().filter_map(|g| HostGlob::new(g).ok()).collect()
}

/// A configured proxy prefix: `scheme://host-glob/path-prefix`.
#[derive(Clone, Debug)]
pub struct ProxyPrefix {
    /// Host part, as a glob.
    pub host: HostGlob,
    /// Everything after the host (path and maybe `?key=`), compared literally.
    pub rest: String,
}

impl ProxyPrefix {
    /// Parses a prefix (`https://`, `http://` or `//`, a host glob, then the literal rest).
    pub fn new(prefix: &str) -> Result<ProxyPrefix, &'static str> {
        let after = prefix
            .strip_prefix("https://")
            .or_else(|| prefix.strip_prefix("http://"))
            .or_else(|| prefix.strip_prefix("//"))
            .ok_or("a proxy prefix starts with http://, https:// or //")?;
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let host = HostGlob::new(&after[..end])?;
        Ok(ProxyPrefix {
            host,
            rest: after[end..].to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = HostGlob::new("*.myzaker.com").unwrap();
        assert!(g.matches("zkres2.myzaker.com"));
        assert!(g.matches("a.b.MYZAKER.com."));
        assert!(!g.matches("myzaker.com"));
        assert!(!g.matches("evilmyzaker.com"));
        let g = HostGlob::new("p*-juejin.byteimg.com").unwrap();
        assert!(g.matches("p3-juejin.byteimg.com"));
        assert!(!g.matches("x.p3-juejin.byteimg.com"));
        assert!(HostGlob::new("a..b").is_err());
        assert!(HostGlob::new("**.a").is_err());
        assert!(HostGlob::new("a b").is_err());
    }
}
