//! A server under test, as `--target` names it: its name, the WebSocket URLs its clients are
//! dealt over and the process ids its cost is measured on. Both a run (`fanout`) and its
//! figures (`report`) speak of it, so it sits below both.

use std::str::FromStr;

/// A server under test: `NAME=URL[+URL…][,pid=PID[+PID…]]`. With several URLs the clients are
/// dealt round-robin over them; with several pids, CPU and memory are summed over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub urls: Vec<String>,
    pub pids: Vec<u32>,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not NAME=WS_URL[+WS_URL…][,pid=PID[+PID…]]"))?;
        let (urls, pids) = match rest.split_once(",pid=") {
            Some((urls, pids)) => (urls, Some(pids)),
            None => (rest, None),
        };
        let urls: Vec<String> = urls.split('+').map(str::to_owned).collect();
        if let Some(url) = urls
            .iter()
            .find(|u| !u.starts_with("ws://") && !u.starts_with("wss://"))
        {
            return Err(format!("{url:?} in target {name:?} is not a ws:// URL"));
        }
        let pids = pids
            .into_iter()
            .flat_map(|pids| pids.split('+'))
            .map(|pid| {
                pid.parse()
                    .map_err(|_| format!("{pid:?} in target {name:?} is not a process id"))
            })
            .collect::<Result<_, _>>()?;
        if name.is_empty() {
            return Err(format!("{text:?} has no name before '='"));
        }
        Ok(Self {
            name: name.to_owned(),
            urls,
            pids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_names_its_urls_and_pids() {
        let one: Target = "killreport=ws://127.0.0.1:4400/graphql,pid=42"
            .parse()
            .expect("valid");
        assert_eq!(one.name, "killreport");
        assert_eq!(one.urls, ["ws://127.0.0.1:4400/graphql"]);
        assert_eq!(one.pids, [42]);

        let two: Target = "two=ws://127.0.0.1:4400/graphql+ws://127.0.0.1:4401/graphql,pid=1+2"
            .parse()
            .expect("valid");
        assert_eq!(two.urls.len(), 2);
        assert_eq!(two.pids, [1, 2]);

        let bare: Target = "peer=ws://127.0.0.1:4100/graphql".parse().expect("valid");
        assert!(bare.pids.is_empty());
    }

    #[test]
    fn a_bad_target_says_what_is_wrong() {
        for bad in [
            "ws://127.0.0.1:4400/graphql",
            "x=http://127.0.0.1:4400/graphql",
            "x=ws://127.0.0.1:4400/graphql,pid=abc",
            "=ws://127.0.0.1:4400/graphql",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad} was accepted");
        }
    }
}
