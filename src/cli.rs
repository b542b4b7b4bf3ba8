//! Command-line arguments.

/// What the user asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `--json`: the versioned JSON document instead of the table.
    pub json: bool,
    /// `--require`: capability names that must all be met.
    pub require: Vec<String>,
    /// `--list-capabilities`.
    pub list: bool,
    /// `--version`.
    pub version: bool,
    /// `--help`.
    pub help: bool,
}

/// Usage text for `--help`.
pub const USAGE: &str = "\
usage: userfault-probe [--json] [--require CAP[,CAP...]]... [--list-capabilities]
                       [--version] [--help]

Reports which userfaultfd, guest_memfd and KVM userfault capabilities the running
kernel offers to the calling user, by asking the kernel and trying each operation on
scratch objects (nothing is left behind; no sysctl is changed).

options:
  --json                 print the JSON document (schema_version 1, see README.md)
  --require CAP[,CAP]    check that every named capability is met: print the verdict
                         (on stderr with --json) instead of the table; may be repeated
  --list-capabilities    print every capability name --require takes, with its meaning
  -V, --version          print the version, git revision and ABI header digest
  -h, --help             print this help

exit status:
  0  probed (and every required capability is met)
  1  a required capability is not met
  2  bad arguments, an unknown capability name, or probing itself failed";

/// Parses the arguments after the program name.
///
/// # Errors
///
/// A message for an unknown option or a missing value.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
    let mut opts = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => opts.json = true,
            "--list-capabilities" => opts.list = true,
            "-V" | "--version" => opts.version = true,
            "-h" | "--help" => opts.help = true,
            "--require" => {
                let value = args
                    .next()
                    .ok_or_else(|| "--require needs a comma-separated list".to_string())?;
                push_caps(&mut opts.require, &value)?;
            }
            other => match other.strip_prefix("--require=") {
                Some(value) => push_caps(&mut opts.require, value)?,
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    Ok(opts)
}

fn push_caps(into: &mut Vec<String>, list: &str) -> Result<(), String> {
    let before = into.len();
    into.extend(
        list.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string),
    );
    if into.len() == before {
        return Err("--require needs at least one capability name".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_options() {
        let o = parse(args(&[
            "--json",
            "--require",
            "uffd, kvm",
            "--require=gmem",
        ]))
        .unwrap();
        assert!(o.json);
        assert_eq!(o.require, ["uffd", "kvm", "gmem"]);
        assert_eq!(parse(args(&[])).unwrap(), Options::default());
        assert!(parse(args(&["--require"])).is_err());
        assert!(parse(args(&["--require", ","])).is_err());
        assert!(parse(args(&["--frobnicate"])).is_err());
        assert!(parse(args(&["-V"])).unwrap().version);
    }
}
