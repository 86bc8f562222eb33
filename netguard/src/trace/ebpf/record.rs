//! The record the probes put into the ring buffer (`netguard-ebpf/include/event.h`) and its
//! decoding into an [`Event`].

use std::mem::{offset_of, size_of};

use chrono::{DateTime, Utc};

use crate::event::{format_mac, Actor, Cause, DeviceKey, Event, EventKind, Netns, Parent, Place};

/// Mirror of `struct ng_record`; change both together.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawRecord {
    pub kind: u32,
    pub flags: u32,
    pub ts_ns: u64,
    pub device_key: u64,
    pub from_netns: u64,
    pub to_netns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub result: i32,
    pub from_ifindex: u32,
    pub to_ifindex: u32,
    pub cause: u8,
    pub perm_addr_len: u8,
    pub pad: [u8; 2],
    pub comm: [u8; 16],
    pub from_name: [u8; 16],
    pub to_name: [u8; 16],
    pub link_kind: [u8; 16],
    pub perm_addr: [u8; 32],
    pub parent_key: u64,
    pub parent_ifindex: u32,
    pub pad2: u32,
    pub parent_name: [u8; 16],
    pub driver: [u8; 16],
    pub bus_addr: [u8; 32],
}

/// Size of one record, as the C side asserts too.
pub const RECORD_SIZE: usize = 240;

// The C compiler lays out event.h; these pin the Rust mirror to the same offsets.
const _: () = {
    assert!(size_of::<RawRecord>() == RECORD_SIZE);
    assert!(offset_of!(RawRecord, ts_ns) == 8);
    assert!(offset_of!(RawRecord, device_key) == 16);
    assert!(offset_of!(RawRecord, from_netns) == 24);
    assert!(offset_of!(RawRecord, to_netns) == 32);
    assert!(offset_of!(RawRecord, pid) == 40);
    assert!(offset_of!(RawRecord, result) == 48);
    assert!(offset_of!(RawRecord, to_ifindex) == 56);
    assert!(offset_of!(RawRecord, cause) == 60);
    assert!(offset_of!(RawRecord, perm_addr_len) == 61);
    assert!(offset_of!(RawRecord, comm) == 64);
    assert!(offset_of!(RawRecord, from_name) == 80);
    assert!(offset_of!(RawRecord, to_name) == 96);
    assert!(offset_of!(RawRecord, link_kind) == 112);
    assert!(offset_of!(RawRecord, perm_addr) == 128);
    assert!(offset_of!(RawRecord, parent_key) == 160);
    assert!(offset_of!(RawRecord, parent_ifindex) == 168);
    assert!(offset_of!(RawRecord, parent_name) == 176);
    assert!(offset_of!(RawRecord, driver) == 192);
    assert!(offset_of!(RawRecord, bus_addr) == 208);
};

/// `enum ng_kind`.
pub mod kind {
    pub const MOVE: u32 = 1;
    pub const TEARDOWN_BEGIN: u32 = 2;
    pub const TEARDOWN_END: u32 = 3;
    pub const RENAME: u32 = 4;
    pub const REGISTER: u32 = 5;
    pub const UNREGISTER: u32 = 6;
}

/// `enum ng_cause`.
pub mod cause {
    pub const EXPLICIT: u8 = 0;
    pub const NETNS_TEARDOWN: u8 = 1;
    pub const PARENT_GONE: u8 = 2;
    pub const DRIVER_UNBIND: u8 = 3;
    pub const DRIVER_BIND: u8 = 4;
}

/// `enum ng_flags`.
pub mod flag {
    pub const DEVICE: u32 = 1 << 0;
    pub const FROM: u32 = 1 << 1;
    pub const TO: u32 = 1 << 2;
    pub const RESULT: u32 = 1 << 3;
    pub const DYING_KNOWN: u32 = 1 << 4;
    pub const DYING: u32 = 1 << 5;
    pub const PARENT: u32 = 1 << 6;
    pub const BUS: u32 = 1 << 7;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("a ring buffer record of {len} bytes is shorter than struct ng_record ({RECORD_SIZE} bytes)")]
    Short { len: usize },
    #[error(
        "unknown record kind {0} in the ring buffer (the eBPF object does not match this netguard)"
    )]
    UnknownKind(u32),
    #[error("unknown cause {0} in the ring buffer (the eBPF object does not match this netguard)")]
    UnknownCause(u8),
}

/// Turns the probes' CLOCK_MONOTONIC stamps into wall-clock time, with the offset between
/// the two clocks taken once.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// realtime - monotonic, in nanoseconds.
    offset_ns: i128,
}

impl WallClock {
    /// Reads both clocks now.
    pub fn now() -> std::io::Result<Self> {
        let mono = clock_ns(libc::CLOCK_MONOTONIC)?;
        let real = clock_ns(libc::CLOCK_REALTIME)?;
        Ok(WallClock {
            offset_ns: real - mono,
        })
    }

    #[cfg(test)]
    pub fn from_offset_ns(offset_ns: i128) -> Self {
        WallClock { offset_ns }
    }

    pub fn wall(&self, monotonic_ns: u64) -> DateTime<Utc> {
        let ns = i128::from(monotonic_ns) + self.offset_ns;
        let ns = i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX });
        DateTime::from_timestamp_nanos(ns)
    }
}

fn clock_ns(clock: libc::clockid_t) -> std::io::Result<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
}

/// Decodes one ring buffer record; `netns` names a netns inode.
pub fn decode(
    bytes: &[u8],
    clock: &WallClock,
    netns: &mut dyn FnMut(u64) -> Netns,
) -> Result<Event, DecodeError> {
    if bytes.len() < RECORD_SIZE {
        return Err(DecodeError::Short { len: bytes.len() });
    }
    // SAFETY: at least RECORD_SIZE bytes are there, RawRecord is plain integers (any bit
    // pattern is valid), and read_unaligned copes with the ring buffer's alignment.
    let raw: RawRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawRecord>()) };
    let kind = match raw.kind {
        kind::MOVE => EventKind::Move,
        kind::TEARDOWN_BEGIN => EventKind::TeardownBegin,
        kind::TEARDOWN_END => EventKind::TeardownEnd,
        kind::RENAME => EventKind::Rename,
        kind::REGISTER => EventKind::Register,
        kind::UNREGISTER => EventKind::Unregister,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    let cause = match raw.cause {
        cause::EXPLICIT => Cause::Explicit,
        cause::NETNS_TEARDOWN => Cause::NetnsTeardown,
        cause::PARENT_GONE => Cause::ParentGone,
        cause::DRIVER_UNBIND => Cause::DriverUnbind,
        cause::DRIVER_BIND => Cause::DriverBind,
        other => return Err(DecodeError::UnknownCause(other)),
    };
    let has = |f: u32| raw.flags & f != 0;
    let mut event = Event::new(kind, cause);
    event.time = clock.wall(raw.ts_ns);
    if has(flag::DEVICE) {
        event.device = Some(DeviceKey(raw.device_key));
        event.link_kind = c_string(&raw.link_kind);
        let len = usize::from(raw.perm_addr_len).min(raw.perm_addr.len());
        event.perm_addr = format_mac(&raw.perm_addr[..len]);
    }
    if has(flag::FROM) {
        event.from = Some(place(
            &raw.from_name,
            raw.from_ifindex,
            netns(raw.from_netns),
        ));
    }
    if has(flag::TO) {
        event.to = Some(place(&raw.to_name, raw.to_ifindex, netns(raw.to_netns)));
    }
    if has(flag::DYING_KNOWN) {
        event.netns_dying = Some(has(flag::DYING));
    }
    if has(flag::RESULT) {
        event.result = Some(raw.result);
    }
    if has(flag::PARENT) {
        event.parent = Some(Parent {
            name: c_string(&raw.parent_name),
            ifindex: (raw.parent_ifindex != 0).then_some(raw.parent_ifindex),
            device: Some(DeviceKey(raw.parent_key)),
        });
    }
    if has(flag::BUS) {
        event.bus_addr = c_string(&raw.bus_addr);
        event.driver = c_string(&raw.driver);
    }
    event.by = Some(Actor {
        pid: raw.pid,
        tgid: raw.tgid,
        comm: c_string(&raw.comm).unwrap_or_default(),
    });
    Ok(event)
}

fn place(name: &[u8], ifindex: u32, netns: Netns) -> Place {
    Place {
        name: c_string(name),
        ifindex: (ifindex != 0).then_some(ifindex),
        netns,
    }
}

/// The text up to the first NUL; `None` when empty.
fn c_string(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    (end > 0).then(|| String::from_utf8_lossy(&bytes[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCK_OFFSET_NS: i128 = 1_700_000_000_000_000_000;

    /// A record written byte by byte at event.h's offsets, so the test checks the layout
    /// independently of RawRecord.
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn new(kind: u32, flags: u32) -> Self {
            let mut b = Bytes(vec![0; RECORD_SIZE]);
            b.put(0, &kind.to_ne_bytes());
            b.put(4, &flags.to_ne_bytes());
            b
        }
        fn put(&mut self, at: usize, v: &[u8]) -> &mut Self {
            self.0[at..at + v.len()].copy_from_slice(v);
            self
        }
        fn u32(&mut self, at: usize, v: u32) -> &mut Self {
            self.put(at, &v.to_ne_bytes())
        }
        fn u64(&mut self, at: usize, v: u64) -> &mut Self {
            self.put(at, &v.to_ne_bytes())
        }
    }

    fn names(inode: u64) -> Netns {
        match inode {
            4026531840 => Netns {
                inode,
                names: vec!["init_net".into()],
            },
            4026532118 => Netns {
                inode,
                names: vec!["/run/netns/c1".into()],
            },
            _ => Netns {
                inode,
                names: vec![],
            },
        }
    }

    fn decode_at_odd_address(bytes: &[u8]) -> Result<Event, DecodeError> {
        // Ring buffer records are only 8-byte aligned; shift by one to prove alignment does not matter.
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(bytes);
        decode(
            &shifted[1..],
            &WallClock::from_offset_ns(CLOCK_OFFSET_NS),
            &mut names,
        )
    }

    #[test]
    fn a_teardown_move_decodes_every_field() {
        let mut b = Bytes::new(
            kind::MOVE,
            flag::DEVICE | flag::FROM | flag::TO | flag::RESULT,
        );
        b.u64(8, 5_000_000_123)
            .u64(16, 0x1234_5678_9abc_def0)
            .u64(24, 4026532118)
            .u64(32, 4026531840)
            .u32(40, 57)
            .u32(44, 56)
            .put(48, &0i32.to_ne_bytes())
            .u32(52, 2)
            .u32(56, 3)
            .put(60, &[cause::NETNS_TEARDOWN, 6])
            .put(64, b"kworker/u4:1\0")
            .put(80, b"eth0\0")
            .put(96, b"dev3\0")
            .put(128, &[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0xff, 0xff]);
        let ev = decode_at_odd_address(&b.0).unwrap();
        assert_eq!(ev.kind, EventKind::Move);
        assert_eq!(ev.cause, Cause::NetnsTeardown);
        assert_eq!(ev.device, Some(DeviceKey(0x1234_5678_9abc_def0)));
        assert_eq!(ev.link_kind, None);
        // Only addr_len (6) bytes count, not the rest of the 32-byte buffer.
        assert_eq!(ev.perm_addr.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(
            ev.from,
            Some(Place {
                name: Some("eth0".into()),
                ifindex: Some(2),
                netns: Netns {
                    inode: 4026532118,
                    names: vec!["/run/netns/c1".into()]
                },
            })
        );
        assert_eq!(
            ev.to,
            Some(Place {
                name: Some("dev3".into()),
                ifindex: Some(3),
                netns: Netns {
                    inode: 4026531840,
                    names: vec!["init_net".into()]
                },
            })
        );
        assert_eq!(ev.result, Some(0));
        assert_eq!(ev.netns_dying, None);
        assert_eq!(
            ev.by,
            Some(Actor {
                pid: 57,
                tgid: 56,
                comm: "kworker/u4:1".into()
            })
        );
        let expected = DateTime::from_timestamp_nanos((CLOCK_OFFSET_NS + 5_000_000_123) as i64);
        assert_eq!(ev.time, expected);
    }

    #[test]
    fn an_unregister_carries_kind_and_dying_and_no_result() {
        let mut b = Bytes::new(
            kind::UNREGISTER,
            flag::DEVICE | flag::FROM | flag::DYING_KNOWN | flag::DYING,
        );
        b.u64(16, 7)
            .u64(24, 4026532118)
            .u32(40, 99)
            .u32(44, 99)
            .u32(52, 5)
            .put(60, &[cause::NETNS_TEARDOWN, 6])
            .put(64, b"kworker/u4:0\0")
            .put(80, b"veth1\0")
            .put(112, b"veth\0")
            .put(128, &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
        let ev = decode_at_odd_address(&b.0).unwrap();
        assert_eq!(ev.kind, EventKind::Unregister);
        assert_eq!(ev.link_kind.as_deref(), Some("veth"));
        assert_eq!(ev.perm_addr.as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!(ev.netns_dying, Some(true));
        assert_eq!(ev.result, None);
        assert_eq!(ev.to, None);
        assert_eq!(
            ev.from.as_ref().and_then(|p| p.name.as_deref()),
            Some("veth1")
        );
        assert_eq!(ev.from.as_ref().and_then(|p| p.ifindex), Some(5));
    }

    #[test]
    fn a_failed_rename_keeps_its_errno() {
        let mut b = Bytes::new(
            kind::RENAME,
            flag::DEVICE | flag::FROM | flag::TO | flag::RESULT,
        );
        b.u64(24, 4026531840)
            .u64(32, 4026531840)
            .put(48, &(-libc::EEXIST).to_ne_bytes())
            .u32(52, 4)
            .u32(56, 4)
            .put(64, b"ip\0")
            .put(80, b"eth1\0")
            .put(96, b"wan0\0");
        let ev = decode_at_odd_address(&b.0).unwrap();
        assert_eq!(ev.kind, EventKind::Rename);
        assert_eq!(ev.cause, Cause::Explicit);
        assert_eq!(ev.result, Some(-libc::EEXIST));
        assert_eq!(ev.current_name(), Some("wan0"));
        // An all-zero perm_addr (addr_len 0) is no address at all.
        assert_eq!(ev.perm_addr, None);
        assert_eq!(ev.by.as_ref().map(|a| a.comm.as_str()), Some("ip"));
    }

    #[test]
    fn a_teardown_window_names_only_its_netns() {
        let mut b = Bytes::new(kind::TEARDOWN_BEGIN, flag::FROM);
        b.u64(24, 4026532118).put(60, &[cause::NETNS_TEARDOWN]);
        let ev = decode_at_odd_address(&b.0).unwrap();
        assert_eq!(ev.kind, EventKind::TeardownBegin);
        assert_eq!(ev.device, None);
        assert_eq!(
            ev.from,
            Some(Place {
                name: None,
                ifindex: None,
                netns: names(4026532118)
            })
        );
        assert_eq!(Bytes::new(kind::TEARDOWN_END, 0).0.len(), RECORD_SIZE);
        let end = decode_at_odd_address(&Bytes::new(kind::TEARDOWN_END, 0).0).unwrap();
        assert_eq!(end.kind, EventKind::TeardownEnd);
        assert_eq!(end.from, None);
    }

    #[test]
    fn register_and_full_length_names_decode() {
        let mut b = Bytes::new(kind::REGISTER, flag::DEVICE | flag::TO | flag::RESULT);
        // A 16-byte name with no NUL (the kernel never does this, but nothing may panic).
        b.put(96, b"abcdefghijklmnop")
            .u32(56, 12)
            .put(112, b"macvlan\0");
        let ev = decode_at_odd_address(&b.0).unwrap();
        assert_eq!(ev.kind, EventKind::Register);
        assert_eq!(ev.current_name(), Some("abcdefghijklmnop"));
        assert_eq!(ev.link_kind.as_deref(), Some("macvlan"));
        assert_eq!((ev.bus_addr, ev.parent), (None, None));
    }

    #[test]
    fn causes_parent_driver_and_bus_address_decode() {
        let mut b = Bytes::new(kind::UNREGISTER, flag::DEVICE | flag::FROM | flag::PARENT);
        b.put(60, &[cause::PARENT_GONE])
            .put(80, b"eth1.9\0")
            .u64(160, 0xfeed)
            .u32(168, 3)
            .put(176, b"eth1\0");
        let ev = decode_at_odd_address(&b.0).unwrap();
        assert_eq!(ev.cause, Cause::ParentGone);
        assert_eq!(
            ev.parent,
            Some(Parent {
                name: Some("eth1".into()),
                ifindex: Some(3),
                device: Some(DeviceKey(0xfeed)),
            })
        );
        let mut b = Bytes::new(kind::UNREGISTER, flag::DEVICE | flag::FROM | flag::BUS);
        b.put(60, &[cause::DRIVER_UNBIND])
            .put(192, b"e1000\0")
            .put(208, b"0000:00:04.0\0");
        let ev = decode_at_odd_address(&b.0).unwrap();
        assert_eq!(ev.cause, Cause::DriverUnbind);
        assert_eq!(ev.driver.as_deref(), Some("e1000"));
        assert_eq!(ev.bus_addr.as_deref(), Some("0000:00:04.0"));
        assert_eq!(ev.parent, None);
        let mut b = Bytes::new(kind::REGISTER, flag::DEVICE | flag::TO | flag::BUS);
        b.put(60, &[cause::DRIVER_BIND]).put(208, b"0000:00:04.0\0");
        let ev = decode_at_odd_address(&b.0).unwrap();
        assert_eq!((ev.cause, ev.driver), (Cause::DriverBind, None));
    }

    #[test]
    fn unknown_kinds_causes_and_short_records_are_errors() {
        let err = decode_at_odd_address(&Bytes::new(42, 0).0).unwrap_err();
        assert_eq!(err, DecodeError::UnknownKind(42));
        assert_eq!(
            err.to_string(),
            "unknown record kind 42 in the ring buffer (the eBPF object does not match this netguard)"
        );
        let err = decode_at_odd_address(&Bytes::new(0, 0).0).unwrap_err();
        assert_eq!(err, DecodeError::UnknownKind(0));
        let mut b = Bytes::new(kind::MOVE, 0);
        b.put(60, &[9]);
        assert_eq!(
            decode_at_odd_address(&b.0).unwrap_err(),
            DecodeError::UnknownCause(9)
        );
        let err = decode_at_odd_address(&[1, 0, 0, 0]).unwrap_err();
        assert_eq!(err, DecodeError::Short { len: 4 });
        assert!(
            err.to_string()
                .contains("4 bytes is shorter than struct ng_record (240 bytes)"),
            "{err}"
        );
    }

    #[test]
    fn wall_clock_adds_the_offset_and_saturates() {
        let clock = WallClock::from_offset_ns(1_000);
        assert_eq!(clock.wall(500), DateTime::from_timestamp_nanos(1_500));
        let far = WallClock::from_offset_ns(i128::from(i64::MAX));
        assert_eq!(far.wall(u64::MAX), DateTime::from_timestamp_nanos(i64::MAX));
        let now = WallClock::now().unwrap();
        let delta = (Utc::now() - now.wall(clock_ns(libc::CLOCK_MONOTONIC).unwrap() as u64))
            .num_milliseconds();
        assert!(delta.abs() < 1_000, "{delta}");
    }
}
