//! `qSupported`: feature negotiation.

use super::check_reply;
use super::vcont::VContSupport;
use crate::RspError;

/// The features this client advertises.
pub const CLIENT_FEATURES: &str = "multiprocess+;swbreak+;hwbreak+;vContSupported+;qXfer:features:read+";

/// `qSupported:<features>`.
pub fn qsupported_request(features: &str) -> Vec<u8> {
    format!("qSupported:{features}").into_bytes()
}

/// `QStartNoAckMode`.
pub const START_NO_ACK_MODE: &[u8] = b"QStartNoAckMode";

/// What the stub said it supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `PacketSize=N` (hex): the largest packet the stub accepts.
    pub packet_size: Option<usize>,
    /// `qXfer:features:read+`: target.xml is available.
    pub xfer_features_read: bool,
    /// `multiprocess+`.
    pub multiprocess: bool,
    /// `vContSupported+`.
    pub vcont_supported: bool,
    /// `swbreak+`: stop replies carry `swbreak`.
    pub swbreak: bool,
    /// `hwbreak+`: stop replies carry `hwbreak`.
    pub hwbreak: bool,
    /// `QStartNoAckMode+`.
    pub no_ack_mode: bool,
    /// Actions announced by `vCont?` (filled by the client after connect).
    pub vcont: Option<VContSupport>,
    /// `qqemu.Supported` names `PhyMemMode`: `m`/`M` can address guest
    /// physical memory (filled by the client after connect).
    pub phys_mem_mode: bool,
    /// Every `name`/value pair as sent: value is `+`, `-`, `?` or the text
    /// after `=`.
    pub raw: Vec<(String, String)>,
}

impl Capabilities {
    /// Raw value of a feature (`+`, `-`, `?` or its `=` value).
    pub fn feature(&self, name: &str) -> Option<&str> {
        self.raw.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Parse a `qSupported` reply.
pub fn parse_qsupported(reply: &[u8]) -> Result<Capabilities, RspError> {
    let r = check_reply("qSupported", reply)?;
    let text = std::str::from_utf8(r).map_err(|_| RspError::unexpected("qSupported", r))?;
    let mut caps = Capabilities::default();
    for item in text.split(';').filter(|s| !s.is_empty()) {
        let (name, val) = if let Some((n, v)) = item.split_once('=') {
            (n, v)
        } else if let Some(n) = item.strip_suffix(['+', '-', '?']) {
            (n, &item[n.len()..])
        } else {
            return Err(RspError::unexpected("qSupported", r));
        };
        let on = val == "+";
        match name {
            "PacketSize" => {
                caps.packet_size =
                    Some(usize::from_str_radix(val, 16).map_err(|_| RspError::unexpected("qSupported", r))?)
            }
            "qXfer:features:read" => caps.xfer_features_read = on,
            "multiprocess" => caps.multiprocess = on,
            "vContSupported" => caps.vcont_supported = on,
            "swbreak" => caps.swbreak = on,
            "hwbreak" => caps.hwbreak = on,
            "QStartNoAckMode" => caps.no_ack_mode = on,
            _ => {}
        }
        caps.raw.push((name.to_string(), val.to_string()));
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_qemu_qsupported() {
        let c = parse_qsupported(b"PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+").unwrap();
        assert_eq!(c.packet_size, Some(4096));
        assert!(c.xfer_features_read && c.vcont_supported && c.multiprocess);
        assert!(!c.no_ack_mode && !c.swbreak);
        assert_eq!(c.feature("multiprocess"), Some("+"));
    }

    #[test]
    fn valid_full_qsupported() {
        let c =
            parse_qsupported(b"PacketSize=47ff;QStartNoAckMode+;swbreak+;hwbreak+;qXfer:libraries:read-;foo?").unwrap();
        assert!(c.no_ack_mode && c.swbreak && c.hwbreak);
        assert_eq!(c.feature("foo"), Some("?"));
        assert_eq!(c.feature("qXfer:libraries:read"), Some("-"));
    }

    #[test]
    fn invalid_qsupported() {
        assert!(parse_qsupported(b"PacketSize=zz").is_err());
        assert!(parse_qsupported(b"weird").is_err());
        assert!(matches!(parse_qsupported(b""), Err(RspError::Unsupported { .. })));
    }
}
