//! Environment overrides: `IMGMIRROR_<SECTION>__<KEY>=value`, each typed after the key's default
//! (strings raw, everything else a TOML value) and set into the configuration's table before it
//! is read.

use super::ConfigError;

/// Prefix of every variable this module reads.
pub(super) const ENV_PREFIX: &str = "IMGMIRROR_";

/// Sets one environment override into `table`, typed after the default's type: string keys take
/// the raw value, every other key a TOML value (`true`, `15`, `["a", "b"]`, `{ h = "ip:port" }`).
/// Returns the dotted key it set (`None` for variables that are not overrides).
pub(super) fn apply_env(
    table: &mut toml::Table,
    defaults: &toml::Table,
    name: &str,
    value: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(None);
    };
    if !rest.contains("__") {
        return Ok(None); // IMGMIRROR_CONFIG and friends are not key overrides
    }
    let src = format!("environment variable {name}");
    let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    let dotted = path.join(".");
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::new(&src, &dotted, "empty key segment"));
    }
    // The default's type decides how the value is read; a key with no default is unknown (and the
    // error names the variable, not the file).
    let mut default: Option<&toml::Value> = None;
    let mut level = Some(defaults);
    for p in &path {
        default = level.and_then(|t| t.get(p));
        level = default.and_then(|v| v.as_table());
    }
    // Keys under these hold user-chosen names, so they have no default to check against.
    let dynamic = path[0] == "presets"
        || dotted.starts_with("upstream.resolve")
        || dotted.starts_with("rewrite.presets")
        || dotted == "rewrite.proxies";
    if default.is_none() && !dynamic {
        return Err(ConfigError::new(&src, &dotted, "unknown key"));
    }
    let parsed = match default {
        Some(toml::Value::String(_)) => toml::Value::String(value.to_string()),
        None if dotted.starts_with("rewrite.presets.")
            || dotted.starts_with("upstream.resolve.") =>
        {
            toml::Value::String(value.to_string())
        }
        _ => match format!("v = {value}").parse::<toml::Table>() {
            Ok(mut t) => t
                .remove("v")
                .unwrap_or(toml::Value::String(value.to_string())),
            Err(_) if default.is_none() => toml::Value::String(value.to_string()),
            Err(_) => {
                let shown = match super::is_secret(&dotted) {
                    true => "the value (not repeated here: it may be a secret)".to_string(),
                    false => format!("{value:?}"),
                };
                return Err(ConfigError::new(
                    &src,
                    &dotted,
                    format!("{shown} is not a valid TOML value for this key"),
                ));
            }
        },
    };
    let mut t = table;
    for (i, p) in path.iter().enumerate() {
        if i + 1 == path.len() {
            t.insert(p.clone(), parsed);
            break;
        }
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::new(&src, &dotted, format!("{p} is not a table")))?;
    }
    Ok(Some(dotted))
}
