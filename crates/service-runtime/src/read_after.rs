//! A caller's reads see its writes through every process of a service, not only the one that
//! applied them: a write's answer carries where it committed in the metadata `x-vbase-lsn`,
//! and a read that sends the latest such value back is served by a replica only once that
//! replica has replayed it (else, after the bounded wait, by the primary). Without it, a
//! caller's read sees its write only through the process that applied it
//! ([`crate::replica::OwnWrites`]).

use crate::replica::Lsn;

/// The metadata key of a write's commit position, on answers and on reads.
pub const LSN_METADATA: &str = "x-vbase-lsn";

/// The longest LSN as PostgreSQL prints it (`FFFFFFFF/FFFFFFFF`).
const MAX_LEN: usize = 17;

/// The position `req`'s read must see: the later of `remembered` (this process's record of the
/// caller's writes) and what the request carries. INVALID_ARGUMENT when it carries something
/// that is not an LSN.
pub fn read_after<T>(
    req: &tonic::Request<T>,
    remembered: Option<Lsn>,
) -> Result<Option<Lsn>, tonic::Status> {
    let Some(raw) = req.metadata().get(LSN_METADATA) else {
        return Ok(remembered);
    };
    let sent = parse(raw.to_str().unwrap_or("")).ok_or_else(|| {
        tonic::Status::invalid_argument(format!(
            "{LSN_METADATA} must be a position like 16/B374D848, as a write's answer carried it"
        ))
    })?;
    Ok(Some(match remembered {
        Some(r) if r.position() > sent.position() => r,
        _ => sent,
    }))
}

/// Puts `lsn` on a write's answer.
pub fn tell<T>(answer: &mut tonic::Response<T>, lsn: &Lsn) {
    if let Ok(v) = lsn.to_string().parse() {
        answer.metadata_mut().insert(LSN_METADATA, v);
    }
}

fn parse(s: &str) -> Option<Lsn> {
    let (hi, lo) = s.split_once('/')?;
    let part = |p: &str| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit());
    (s.len() <= MAX_LEN && part(hi) && part(lo)).then(|| s.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lsn: Option<&str>) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        if let Some(l) = lsn {
            r.metadata_mut().insert(LSN_METADATA, l.parse().unwrap());
        }
        r
    }

    #[test]
    fn the_later_of_the_remembered_and_the_sent_position_is_kept() {
        let low: Lsn = "0/10".parse().unwrap();
        let high: Lsn = "1/0".parse().unwrap();
        assert_eq!(
            read_after(&req(None), Some(low.clone())).unwrap(),
            Some(low.clone())
        );
        assert_eq!(
            read_after(&req(Some("1/0")), Some(low.clone())).unwrap(),
            Some(high.clone())
        );
        assert_eq!(
            read_after(&req(Some("0/10")), Some(high.clone())).unwrap(),
            Some(high)
        );
        assert_eq!(read_after(&req(Some("0/10")), None).unwrap(), Some(low));
    }

    #[test]
    fn anything_but_an_lsn_is_refused() {
        for bad in [
            "",
            "16",
            "/",
            "16/",
            "G/1",
            "123456789/0",
            "0/123456789",
            "1/2/3",
            " 1/2",
        ] {
            let e = read_after(&req(Some(bad)), None).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
