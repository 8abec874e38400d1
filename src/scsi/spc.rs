//! Primary commands (SPC-4) of a direct-access logical unit: the data these commands return and
//! the checks on their parameter lists. Pure functions of the CDB fields (already parsed by
//! [`cdb`]), the [`LunInfo`] and the mode page state.
//!
//! Implements:
//! - INQUIRY (SPC-4 6.6): standard data (6.6.2) and the VPD pages (7.8) Supported VPD Pages
//!   (00h, 7.8.14), Unit Serial Number (80h, 7.8.15), Device Identification (83h, 7.8.6),
//!   Extended INQUIRY Data (86h, 7.8.7), and the SBC-3 pages Block Limits (B0h, SBC-3 6.5.3),
//!   Block Device Characteristics (B1h, 6.5.2) and Logical Block Provisioning (B2h, 6.5.4);
//! - REPORT LUNS (SPC-4 6.33) with single-level LUN encoding (SAM-5 4.7);
//! - REQUEST SENSE (SPC-4 6.39), fixed or descriptor format;
//! - MODE SENSE (6)/(10) and MODE SELECT (6)/(10) (SPC-4 6.9 - 6.12, mode parameter header and
//!   block descriptors 7.5.4 - 7.5.6, SBC-3 6.4.2) for the Caching (08h, SBC-3 6.4.5), Control
//!   (0Ah, SPC-4 7.5.8) and Informational Exceptions Control (1Ch, SPC-4 7.5.12) pages;
//! - REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), from [`cdb::SUPPORTED_COMMANDS`].
//!
//! Allocation lengths truncate the returned data (SPC-4 4.2.5.6); an allocation length of zero
//! returns GOOD with no data.

use super::cdb::{self, CommandInfo, ModeSense, PageControl, RsocRequest};
use super::lun::{LunInfo, encode_lun};
use super::sense::Sense;
use super::{Completion, sbc};

/// T10 VENDOR IDENTIFICATION (8 bytes, space padded).
pub const VENDOR_ID: &[u8; 8] = b"SHOAL   ";
/// PRODUCT IDENTIFICATION (16 bytes, space padded).
pub const PRODUCT_ID: &[u8; 16] = b"Shoal Volume    ";
/// PRODUCT REVISION LEVEL (4 bytes).
pub const PRODUCT_REVISION: &[u8; 4] = b"0001";
/// VERSION DESCRIPTORS (SPC-4 table 146): SAM-5, iSCSI, SPC-4, SBC-3 (no version claimed).
pub const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];
/// Length of the standard INQUIRY data we return.
pub const STANDARD_INQUIRY_LEN: usize = 96;
/// PERIPHERAL QUALIFIER 000b, DEVICE TYPE 00h: a connected direct-access block device.
pub const PERIPHERAL_DIRECT_ACCESS: u8 = 0x00;
/// PERIPHERAL QUALIFIER 011b, DEVICE TYPE 1Fh: no logical unit at this LUN.
pub const PERIPHERAL_NO_LUN: u8 = 0x7F;
/// The VPD pages we implement, ascending.
pub const SUPPORTED_VPD_PAGES: [u8; 8] = [0x00, 0x80, 0x83, 0x86, 0x8F, 0xB0, 0xB1, 0xB2];

/// Mode page code: Caching (SBC-3 6.4.5).
pub const MODE_PAGE_CACHING: u8 = 0x08;
/// Mode page code: Control (SPC-4 7.5.8).
pub const MODE_PAGE_CONTROL: u8 = 0x0A;
/// Mode page code: Informational Exceptions Control (SPC-4 7.5.12).
pub const MODE_PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
/// Mode page code: return all pages.
pub const MODE_PAGE_ALL: u8 = 0x3F;
/// The mode pages we implement, ascending (the order of "all pages").
pub const MODE_PAGES: [u8; 3] = [
    MODE_PAGE_CACHING,
    MODE_PAGE_CONTROL,
    MODE_PAGE_INFORMATIONAL_EXCEPTIONS,
];

/// The changeable mode parameters of a logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeState {
    /// Caching page WCE: write-back caching enabled (SYNCHRONIZE CACHE makes writes durable);
    /// when clear every write is forced to FUA.
    pub wce: bool,
    /// Control page SWP (software write protect, SPC-4 7.5.8): set by an initiator, the logical
    /// unit is write protected for every nexus until cleared (or the target restarts).
    pub swp: bool,
}

/// Truncates Data-In to the CDB's allocation length.
pub fn truncate(mut data: Vec<u8>, alloc_len: u32) -> Vec<u8> {
    data.truncate(usize::try_from(alloc_len).unwrap_or(usize::MAX));
    data
}

/// GOOD status with `data` truncated to `alloc_len`.
fn good(data: Vec<u8>, alloc_len: u32) -> Completion {
    Completion::good(truncate(data, alloc_len))
}

/// Copies `src` into `dst` space-padded (or cut) to `dst.len()`, replacing anything but printable
/// ASCII (SPC-4 4.3.1) with `_`.
fn put_ascii(dst: &mut [u8], src: &[u8]) {
    dst.fill(b' ');
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = if (0x20..0x7F).contains(&s) { s } else { b'_' };
    }
}

// ------------------------------------------------------------------------------------------
// INQUIRY
// ------------------------------------------------------------------------------------------

/// Standard INQUIRY data (SPC-4 6.6.2), 96 bytes, with the given PERIPHERAL QUALIFIER / DEVICE
/// TYPE byte: SPC-4 (VERSION 06h), HiSup, RESPONSE DATA FORMAT 2, CmdQue, not removable, no
/// protection, TPGS 01b (implicit ALUA: REPORT TARGET PORT GROUPS, one group, every port active
/// and optimized), NormACA=0, 3PC (EXTENDED COPY, `scsi::xcopy`).
pub fn standard_inquiry(peripheral: u8) -> Vec<u8> {
    let mut d = vec![0u8; STANDARD_INQUIRY_LEN];
    d[0] = peripheral;
    d[1] = 0x00; // RMB=0
    d[2] = 0x06; // VERSION: SPC-4
    d[3] = 0x12; // HISUP | RESPONSE DATA FORMAT 2
    d[4] = (STANDARD_INQUIRY_LEN - 5) as u8; // ADDITIONAL LENGTH
    d[5] = 0x10 | 0x08; // TPGS 01b: implicit ALUA; 3PC: EXTENDED COPY (scsi::xcopy)
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(VENDOR_ID);
    d[16..32].copy_from_slice(PRODUCT_ID);
    d[32..36].copy_from_slice(PRODUCT_REVISION);
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// INQUIRY (SPC-4 6.6): standard data, or the VPD page `page_code` when EVPD is set. An unknown
/// page is INVALID FIELD IN CDB pointing at the PAGE CODE.
pub fn inquiry(info: &LunInfo, evpd: bool, page_code: u8, alloc_len: u32) -> Completion {
    if !evpd {
        return good(standard_inquiry(PERIPHERAL_DIRECT_ACCESS), alloc_len);
    }
    match vpd_page(info, page_code) {
        Some(page) => good(page, alloc_len),
        None => Completion::check(Sense::invalid_field_in_cdb(2, None)),
    }
}

/// The VPD page `page_code`, or `None` when we do not implement it.
pub fn vpd_page(info: &LunInfo, page_code: u8) -> Option<Vec<u8>> {
    let body = match page_code {
        0x00 => SUPPORTED_VPD_PAGES.to_vec(),
        0x80 => unit_serial_number(info),
        0x83 => device_identification(info),
        0x86 => extended_inquiry(),
        0x8F => super::xcopy::third_party_copy_vpd(),
        0xB0 => block_limits(info),
        0xB1 => block_device_characteristics(info),
        0xB2 => logical_block_provisioning(info),
        _ => return None,
    };
    Some(vpd(PERIPHERAL_DIRECT_ACCESS, page_code, &body))
}

/// A VPD page: PERIPHERAL byte, PAGE CODE, 2-byte PAGE LENGTH, then `body`.
fn vpd(peripheral: u8, page_code: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut d = vec![peripheral, page_code];
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(body);
    d
}

/// Unit Serial Number (80h) body: the serial in printable ASCII, at most 252 bytes.
fn unit_serial_number(info: &LunInfo) -> Vec<u8> {
    let src = info.serial.as_bytes();
    let mut sn = vec![0u8; src.len().min(252)];
    put_ascii(&mut sn, src);
    sn
}

/// One designation descriptor (SPC-4 7.8.6.1): PROTOCOL IDENTIFIER / CODE SET byte, PIV /
/// ASSOCIATION / DESIGNATOR TYPE byte, reserved, length, designator (at most 255 bytes).
fn designator(proto_code_set: u8, piv_assoc_type: u8, value: &[u8]) -> Vec<u8> {
    let value = value.get(..value.len().min(255)).unwrap_or(value);
    let mut d = vec![proto_code_set, piv_assoc_type, 0x00, value.len() as u8];
    d.extend_from_slice(value);
    d
}

/// Protocol identifier of iSCSI (SPC-4 table 362), in the high nibble.
const PROTOCOL_ISCSI: u8 = 0x50;
/// Code sets (SPC-4 table 461).
const CODE_SET_BINARY: u8 = 0x01;
const CODE_SET_ASCII: u8 = 0x02;
const CODE_SET_UTF8: u8 = 0x03;
/// PIV bit.
const PIV: u8 = 0x80;
/// Associations (SPC-4 table 462), already shifted.
const ASSOC_LU: u8 = 0x00;
const ASSOC_TARGET_PORT: u8 = 0x10;
const ASSOC_TARGET_DEVICE: u8 = 0x20;
/// Designator types (SPC-4 table 463).
const DESIGNATOR_T10_VENDOR: u8 = 0x1;
const DESIGNATOR_NAA: u8 = 0x3;
const DESIGNATOR_RELATIVE_PORT: u8 = 0x4;
const DESIGNATOR_SCSI_NAME: u8 = 0x8;
const DESIGNATOR_TARGET_PORT_GROUP: u8 = 0x5;
/// The one target port group: every portal of every target is in it, active/optimized.
pub const TARGET_PORT_GROUP: u16 = 1;

/// A SCSI NAME STRING (SPC-4 7.8.6.11): UTF-8, null terminated, padded with nulls to a multiple
/// of 4 bytes, at most 252 bytes.
fn scsi_name_string(name: &str) -> Vec<u8> {
    let bytes = name.as_bytes();
    let mut s = bytes.get(..bytes.len().min(251)).unwrap_or(bytes).to_vec();
    s.push(0);
    while s.len() % 4 != 0 {
        s.push(0);
    }
    s
}

/// Device Identification (83h) body: the logical unit's NAA IEEE Registered Extended designator
/// and T10 vendor ID designator, the target device's SCSI name string (iSCSI, PIV) and the
/// relative target port identifier (iSCSI, PIV).
fn device_identification(info: &LunInfo) -> Vec<u8> {
    let mut body = designator(CODE_SET_BINARY, ASSOC_LU | DESIGNATOR_NAA, &info.naa);
    let mut t10 = VENDOR_ID.to_vec();
    t10.extend(unit_serial_number(info));
    body.extend(designator(
        CODE_SET_ASCII,
        ASSOC_LU | DESIGNATOR_T10_VENDOR,
        &t10,
    ));
    body.extend(designator(
        PROTOCOL_ISCSI | CODE_SET_UTF8,
        PIV | ASSOC_TARGET_DEVICE | DESIGNATOR_SCSI_NAME,
        &scsi_name_string(&info.target_name),
    ));
    let port = info.relative_port_id.to_be_bytes();
    body.extend(designator(
        PROTOCOL_ISCSI | CODE_SET_BINARY,
        PIV | ASSOC_TARGET_PORT | DESIGNATOR_RELATIVE_PORT,
        &[0, 0, port[0], port[1]],
    ));
    let group = TARGET_PORT_GROUP.to_be_bytes();
    body.extend(designator(
        PROTOCOL_ISCSI | CODE_SET_BINARY,
        PIV | ASSOC_TARGET_PORT | DESIGNATOR_TARGET_PORT_GROUP,
        &[0, 0, group[0], group[1]],
    ));
    body
}

/// REPORT TARGET PORT GROUPS data (SPC-4 6.36.2): one target port group, [`TARGET_PORT_GROUP`],
/// in the active/optimized state (the only one it supports: AO_SUP), holding the target's port.
/// Multipath initiators (ESXi's VMW_SATP_ALUA, Linux dm-multipath's alua handler) then use every
/// path alike. With `extended`, the header carries PARAMETER DATA FORMAT 001b and an implicit
/// transition time of 0.
pub fn report_target_port_groups(info: &LunInfo, extended: bool, alloc_len: u32) -> Completion {
    let mut group = vec![
        0x80, // PREF=1, ASYMMETRIC ACCESS STATE 0h: active/optimized
        0x01, // AO_SUP
    ];
    group.extend_from_slice(&TARGET_PORT_GROUP.to_be_bytes());
    group.extend_from_slice(&[0, 0, 0, 1]); // reserved, STATUS CODE 0, vendor, TARGET PORT COUNT 1
    group.extend_from_slice(&[0, 0]);
    group.extend_from_slice(&info.relative_port_id.to_be_bytes());
    let mut d = Vec::with_capacity(8 + group.len());
    if extended {
        d.extend_from_slice(&((group.len() + 4) as u32).to_be_bytes());
        d.extend_from_slice(&[0x10, 0, 0, 0]); // FORMAT TYPE 001b, implicit transition time 0
    } else {
        d.extend_from_slice(&(group.len() as u32).to_be_bytes());
    }
    d.extend(group);
    d.truncate(alloc_len as usize);
    Completion::good(d)
}

/// Whether `descriptor` (a designation descriptor, SPC-4 7.8.6.1: CODE SET, ASSOCIATION and
/// DESIGNATOR TYPE, DESIGNATOR LENGTH, designator) names this logical unit: it equals one of the
/// logical-unit designators of its Device Identification page (EXTENDED COPY's identification
/// CSCD descriptors name copy targets this way).
pub fn designates_lu(info: &LunInfo, descriptor: &[u8]) -> bool {
    let page = device_identification(info);
    let mut rest = &page[..];
    while let Some(&len) = rest.get(3) {
        let Some(own) = rest.get(..4 + usize::from(len)) else {
            break;
        };
        let is_lu = (own[1] >> 4) & 0x03 == ASSOC_LU;
        let same = descriptor.len() >= own.len()
            && own[0] & 0x0F == descriptor[0] & 0x0F
            && own[1] & 0x3F == descriptor[1] & 0x3F
            && own[3] == descriptor[3]
            && own[4..] == descriptor[4..own.len()];
        if is_lu && same {
            return true;
        }
        rest = &rest[own.len()..];
    }
    false
}

/// Extended INQUIRY Data (86h) body, PAGE LENGTH 3Ch: SIMPSUP (we treat every task as SIMPLE;
/// no HEADSUP/ORDSUP), no protection, V_SUP=0, LUICLR=1.
fn extended_inquiry() -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    b[1] = 0x01; // byte 5: SIMPSUP
    b[3] = 0x01; // byte 7: LUICLR
    b
}

/// Block Limits (B0h) body, PAGE LENGTH 3Ch (SBC-3 6.5.3; SBC-4 field names): WSNZ=1 (a WRITE
/// SAME of zero blocks is rejected), MAXIMUM COMPARE AND WRITE LENGTH
/// ([`sbc::MAX_COMPARE_AND_WRITE_BLOCKS`]), OPTIMAL TRANSFER LENGTH GRANULARITY =
/// logical blocks per physical block, MAXIMUM TRANSFER LENGTH from the LU, MAXIMUM WRITE SAME
/// LENGTH ([`sbc::max_write_same_length`]); for a thin LU the unmap limits: MAXIMUM UNMAP LBA COUNT
/// ([`sbc::max_unmap_lba_count`]), MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
/// ([`sbc::MAX_UNMAP_BLOCK_DESCRIPTORS`]), OPTIMAL UNMAP GRANULARITY = the extent size in blocks with
/// UGAVALID=1 and UNMAP GRANULARITY ALIGNMENT 0 (extents start at LBA 0), all zero otherwise;
/// MAXIMUM ATOMIC TRANSFER LENGTH from the LU (WRITE ATOMIC (16)), with no atomic alignment or
/// granularity and no atomic boundaries.
fn block_limits(info: &LunInfo) -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    b[0] = 0x01; // byte 4: WSNZ
    b[1] = sbc::MAX_COMPARE_AND_WRITE_BLOCKS as u8; // byte 5: MAXIMUM COMPARE AND WRITE LENGTH
    let granularity = u16::try_from(info.logical_per_physical()).unwrap_or(1);
    b[2..4].copy_from_slice(&granularity.to_be_bytes()); // bytes 6-7
    b[4..8].copy_from_slice(&info.max_transfer_blocks.to_be_bytes()); // bytes 8-11
    b[16..20].copy_from_slice(&sbc::max_unmap_lba_count(info).to_be_bytes()); // bytes 20-23
    b[20..24].copy_from_slice(&sbc::max_unmap_block_descriptors(info).to_be_bytes()); // 24-27
    let unmap_granularity = sbc::optimal_unmap_granularity(info);
    b[24..28].copy_from_slice(&unmap_granularity.to_be_bytes()); // bytes 28-31
    if unmap_granularity != 0 {
        b[28] = 0x80; // byte 32: UGAVALID, UNMAP GRANULARITY ALIGNMENT 0
    }
    let ws = u64::from(sbc::max_write_same_length(info));
    b[32..40].copy_from_slice(&ws.to_be_bytes()); // bytes 36-43
    b[40..44].copy_from_slice(&info.max_atomic_blocks.to_be_bytes()); // bytes 44-47
    b
}

/// Block Device Characteristics (B1h) body, PAGE LENGTH 3Ch: MEDIUM ROTATION RATE 1
/// (non-rotating), nominal form factor not reported; on a thin LU, which implements SANITIZE
/// BLOCK ERASE, WABEREQ 01b (SBC-4 6.6.2: a read of a block erased by it completes with GOOD;
/// here it reads zeros, LBPRZ). WACEREQ 00b: no CRYPTOGRAPHIC ERASE.
fn block_device_characteristics(info: &LunInfo) -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    b[0..2].copy_from_slice(&1u16.to_be_bytes()); // bytes 4-5
    if info.thin {
        b[3] = 0x40; // byte 7: WABEREQ 01b
    }
    b
}

/// Logical Block Provisioning (B2h) body, PAGE LENGTH 4 (SBC-3 6.5.4): THRESHOLD EXPONENT 0 (no
/// thresholds to set), and for a thin LU LBPU (UNMAP), LBPWS (WRITE SAME (16) with UNMAP), LBPWS10
/// (WRITE SAME (10) with UNMAP), LBPRZ (an unmapped block reads as zeros; SBC-4's LBPRZ field
/// 001b), ANC_SUP=0 (no anchored state), DP=0 (no resource descriptor), PROVISIONING TYPE 010b
/// (thin). A fully provisioned LU reports all zero.
fn logical_block_provisioning(info: &LunInfo) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    if info.thin {
        b[1] = 0xE4; // byte 5: LBPU | LBPWS | LBPWS10 | LBPRZ
        b[2] = 0x02; // byte 6: PROVISIONING TYPE thin
    }
    b
}

// ------------------------------------------------------------------------------------------
// REPORT LUNS / REQUEST SENSE
// ------------------------------------------------------------------------------------------

/// REPORT LUNS (SPC-4 6.33) parameter data for `luns`: SELECT REPORT 00h and 02h list them,
/// 01h (well-known LUs only) lists none. `select_report` was checked by the parser.
pub fn report_luns(select_report: u8, alloc_len: u32, luns: &[u64]) -> Completion {
    let listed: &[u64] = if select_report == 1 { &[] } else { luns };
    let list_len = u32::try_from(listed.len() * 8).unwrap_or(u32::MAX);
    let mut d = Vec::with_capacity(8 + listed.len() * 8);
    d.extend_from_slice(&list_len.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for &lun in listed {
        d.extend_from_slice(&encode_lun(lun));
    }
    good(d, alloc_len)
}

/// REQUEST SENSE (SPC-4 6.39) returning `sense` as parameter data: fixed format, or descriptor
/// format when DESC=1.
pub fn request_sense(desc: bool, alloc_len: u32, sense: &Sense) -> Completion {
    let data = if desc {
        sense.to_descriptor_bytes()
    } else {
        sense.to_bytes()
    };
    good(data, alloc_len)
}

// ------------------------------------------------------------------------------------------
// MODE SENSE / MODE SELECT
// ------------------------------------------------------------------------------------------

/// The mode page `page` (page_0 format) for page control `pc`, or `None` for a page we do not
/// implement. Saved values are not kept; callers reject PC=11b before asking.
pub fn mode_page(
    page: u8,
    pc: PageControl,
    current: &ModeState,
    default: &ModeState,
) -> Option<Vec<u8>> {
    let changeable = pc == PageControl::Changeable;
    let state = if pc == PageControl::Current {
        current
    } else {
        default
    };
    let mut p = match page {
        MODE_PAGE_CACHING => {
            let mut p = vec![0u8; 0x14];
            if changeable || state.wce {
                p[2] = 0x04; // WCE (RCD=0: read caching enabled)
            }
            p
        }
        MODE_PAGE_CONTROL => {
            let mut p = vec![0u8; 0x0C];
            if changeable || state.swp {
                p[4] = 0x08; // SWP (UA_INTLCK_CTRL=00b)
            }
            if !changeable {
                p[2] = 0x02; // TST=000b, D_SENSE=0, GLTSD=1 (no log pages to save)
                p[3] = 0x10; // QUEUE ALGORITHM MODIFIER=1 (unrestricted), QERR=00b
                // byte 5: TAS=0, ATO=0, AUTOLOAD=0
                p[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes()); // BUSY TIMEOUT: unlimited
            }
            p
        }
        MODE_PAGE_INFORMATIONAL_EXCEPTIONS => {
            let mut p = vec![0u8; 0x0C];
            if !changeable {
                p[2] = 0x08; // DEXCPT: informational exceptions disabled, MRIE=0
            }
            p
        }
        _ => return None,
    };
    p[0] = page;
    p[1] = (p.len() - 2) as u8;
    Some(p)
}

/// The pages MODE SENSE asks for, or INVALID FIELD IN CDB.
fn requested_pages(req: &ModeSense) -> Result<Vec<u8>, Sense> {
    // Subpage 00h is the page itself, FFh the page and all its subpages (we have none).
    if req.subpage_code != 0x00 && req.subpage_code != 0xFF {
        return Err(Sense::invalid_field_in_cdb(3, None));
    }
    if req.page_code == MODE_PAGE_ALL {
        return Ok(MODE_PAGES.to_vec());
    }
    if MODE_PAGES.contains(&req.page_code) {
        return Ok(vec![req.page_code]);
    }
    Err(Sense::invalid_field_in_cdb(2, Some(5)))
}

/// The NUMBER OF LOGICAL BLOCKS a short LBA block descriptor carries (FFFFFFFFh when the
/// capacity does not fit, SBC-3 6.4.2.2).
fn short_descriptor_blocks(num_blocks: u64) -> u32 {
    u32::try_from(num_blocks).unwrap_or(u32::MAX)
}

/// The block descriptor of MODE SENSE: short LBA (8 bytes, SBC-3 6.4.2.2) or long LBA
/// (16 bytes, 6.4.2.3). The changeable-values version is all zero (nothing is changeable).
fn block_descriptor(info: &LunInfo, long: bool, pc: PageControl) -> Vec<u8> {
    let (blocks, block_len) = if pc == PageControl::Changeable {
        (0, 0)
    } else {
        (info.num_blocks, info.block_size)
    };
    if long {
        let mut d = blocks.to_be_bytes().to_vec();
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&block_len.to_be_bytes());
        d
    } else {
        let mut d = short_descriptor_blocks(blocks).to_be_bytes().to_vec();
        d.push(0);
        d.extend_from_slice(&block_len.to_be_bytes()[1..]);
        d
    }
}

/// The DEVICE-SPECIFIC PARAMETER of a direct-access mode parameter header (SBC-3 6.4.1): WP for a
/// read-only LU, DPOFUA since DPO and FUA are supported.
fn device_specific_parameter(info: &LunInfo) -> u8 {
    let wp = if info.read_only { 0x80 } else { 0x00 };
    wp | 0x10
}

/// MODE SENSE (6)/(10) (SPC-4 6.11, 6.12): mode parameter header, block descriptor (unless DBD;
/// long LBA format when LLBAA), then the requested pages.
pub fn mode_sense(
    info: &LunInfo,
    req: &ModeSense,
    current: &ModeState,
    default: &ModeState,
) -> Completion {
    if req.pc == PageControl::Saved {
        return Completion::check(Sense::saving_parameters_not_supported());
    }
    let pages = match requested_pages(req) {
        Ok(pages) => pages,
        Err(sense) => return Completion::check(sense),
    };
    let descriptor = if req.dbd {
        Vec::new()
    } else {
        block_descriptor(info, req.llbaa, req.pc)
    };
    let mut body = descriptor.clone();
    for page in pages {
        body.extend(mode_page(page, req.pc, current, default).unwrap_or_default());
    }
    let dsp = device_specific_parameter(info);
    let mut d = if req.ten {
        let total = 8 + body.len();
        let mut h = ((total - 2) as u16).to_be_bytes().to_vec();
        h.extend_from_slice(&[0x00, dsp, u8::from(req.llbaa && !req.dbd), 0x00]);
        h.extend_from_slice(&(descriptor.len() as u16).to_be_bytes());
        h
    } else {
        let total = 4 + body.len();
        vec![(total - 1) as u8, 0x00, dsp, descriptor.len() as u8]
    };
    d.extend(body);
    good(d, req.alloc_len)
}

/// Reads a big-endian field of the parameter list (0 when out of range).
fn param_be(params: &[u8], start: usize, len: usize) -> u64 {
    params
        .get(start..start + len)
        .map(|b| b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
        .unwrap_or(0)
}

/// Checks one MODE SELECT block descriptor at `offset`: the block length must be ours and the
/// NUMBER OF LOGICAL BLOCKS zero (no change) or the current capacity; we cannot reformat.
fn check_block_descriptor(
    info: &LunInfo,
    params: &[u8],
    offset: usize,
    long: bool,
) -> Result<(), Sense> {
    let (blocks, current, len_at, len_size) = if long {
        (param_be(params, offset, 8), info.num_blocks, offset + 12, 4)
    } else {
        (
            param_be(params, offset, 4),
            u64::from(short_descriptor_blocks(info.num_blocks)),
            offset + 5,
            3,
        )
    };
    if blocks != 0 && blocks != current {
        return Err(Sense::invalid_field_in_parameter_list(offset as u16));
    }
    if param_be(params, len_at, len_size) != u64::from(info.block_size) {
        return Err(Sense::invalid_field_in_parameter_list(len_at as u16));
    }
    Ok(())
}

/// Checks one mode page of a MODE SELECT parameter list at `offset` against the current values
/// and the changeable mask; returns the page's length in the list and the new WCE if it is the
/// caching page.
fn check_mode_page<'a>(
    params: &'a [u8],
    offset: usize,
    current: &ModeState,
    default: &ModeState,
) -> Result<(usize, &'a [u8]), Sense> {
    let Some(&b0) = params.get(offset) else {
        return Err(Sense::parameter_list_length_error());
    };
    let page = b0 & 0x3F;
    if b0 & 0x40 != 0 {
        // SPF: a subpage; we implement none.
        return Err(Sense::invalid_field_in_parameter_list_bit(
            offset as u16,
            Some(6),
        ));
    }
    let (Some(cur), Some(mask)) = (
        mode_page(page, PageControl::Current, current, default),
        mode_page(page, PageControl::Changeable, current, default),
    ) else {
        return Err(Sense::invalid_field_in_parameter_list_bit(
            offset as u16,
            Some(5),
        ));
    };
    let page_len = usize::from(params.get(offset + 1).copied().unwrap_or(0));
    if page_len != cur.len() - 2 {
        return Err(Sense::invalid_field_in_parameter_list((offset + 1) as u16));
    }
    let Some(new) = params.get(offset..offset + cur.len()) else {
        return Err(Sense::parameter_list_length_error());
    };
    for i in 2..cur.len() {
        let diff = (new[i] ^ cur[i]) & !mask[i];
        if diff != 0 {
            let bit = 7 - diff.leading_zeros() as u8;
            return Err(Sense::invalid_field_in_parameter_list_bit(
                (offset + i) as u16,
                Some(bit),
            ));
        }
    }
    Ok((cur.len(), new))
}

/// MODE SELECT (6)/(10) (SPC-4 6.9, 6.10): validates the whole parameter list (header, block
/// descriptors, pages) and returns the new mode state. Only the caching page's WCE and the control
/// page's SWP are changeable;
/// any other field that differs from its current value is INVALID FIELD IN PARAMETER LIST. Nothing
/// changes unless the whole list is valid. An empty list changes nothing.
pub fn mode_select(
    info: &LunInfo,
    current: &ModeState,
    default: &ModeState,
    ten: bool,
    params: &[u8],
) -> Result<ModeState, Sense> {
    if params.is_empty() {
        return Ok(*current);
    }
    let header_len = if ten { 8 } else { 4 };
    if params.len() < header_len {
        return Err(Sense::parameter_list_length_error());
    }
    let medium_type_at = if ten { 2 } else { 1 };
    if params[medium_type_at] != 0 {
        return Err(Sense::invalid_field_in_parameter_list(
            medium_type_at as u16,
        ));
    }
    let long = ten && params[4] & 0x01 != 0;
    let bd_len = if ten {
        param_be(params, 6, 2) as usize
    } else {
        usize::from(params[3])
    };
    let bd_size = if long { 16 } else { 8 };
    if bd_len % bd_size != 0 {
        return Err(Sense::invalid_field_in_parameter_list(if ten {
            6
        } else {
            3
        }));
    }
    if header_len + bd_len > params.len() {
        return Err(Sense::parameter_list_length_error());
    }
    for offset in (header_len..header_len + bd_len).step_by(bd_size) {
        check_block_descriptor(info, params, offset, long)?;
    }
    let mut next = *current;
    let mut offset = header_len + bd_len;
    while offset < params.len() {
        let (len, page) = check_mode_page(params, offset, current, default)?;
        match page[0] & 0x3F {
            MODE_PAGE_CACHING => next.wce = page[2] & 0x04 != 0,
            MODE_PAGE_CONTROL => next.swp = page[4] & 0x08 != 0,
            _ => {}
        }
        offset += len;
    }
    Ok(next)
}

// ------------------------------------------------------------------------------------------
// REPORT SUPPORTED OPERATION CODES
// ------------------------------------------------------------------------------------------

/// The command timeouts descriptor (SPC-4 6.35.4): length 0Ah, timeouts not specified (0).
fn timeouts_descriptor() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0A;
    t
}

/// One command descriptor of the all-commands format (SPC-4 6.35.2, table 262).
fn command_descriptor(info: &CommandInfo, rctd: bool) -> Vec<u8> {
    let sa = info.service_action.unwrap_or(0).to_be_bytes();
    let flags = (u8::from(rctd) << 1) | u8::from(info.service_action.is_some()); // CTDP, SERVACTV
    let cdb_len = (info.usage.len() as u16).to_be_bytes();
    let mut d = vec![
        info.opcode,
        0,
        sa[0],
        sa[1],
        0,
        flags,
        cdb_len[0],
        cdb_len[1],
    ];
    if rctd {
        d.extend_from_slice(&timeouts_descriptor());
    }
    d
}

/// The one-command format (SPC-4 6.35.3, table 264): SUPPORT 011b with the CDB usage data, or
/// 001b (not supported) with none.
fn one_command(info: Option<&CommandInfo>, rctd: bool) -> Vec<u8> {
    let Some(info) = info else {
        return vec![0, 0x01, 0, 0];
    };
    let ctdp = if rctd { 0x80 } else { 0x00 };
    let cdb_len = (info.usage.len() as u16).to_be_bytes();
    let mut d = vec![0, ctdp | 0x03, cdb_len[0], cdb_len[1]];
    d.extend_from_slice(info.usage);
    if rctd {
        d.extend_from_slice(&timeouts_descriptor());
    }
    d
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) of a thin (`thin`) or fully provisioned LU; the
/// latter does not support the [`CommandInfo::thin_only`] commands, and an LU that cannot write
/// atomically (`atomic` false) not WRITE ATOMIC (16). REPORTING OPTIONS 000b lists
/// every command; 001b asks about an opcode without service actions, 010b about an opcode and
/// service action (INVALID FIELD IN CDB when the opcode has none / has some, respectively); 011b
/// accepts both.
pub fn report_supported_opcodes(req: &RsocRequest, thin: bool, atomic: bool) -> Completion {
    let offered = |c: &&cdb::CommandInfo| {
        (thin || !c.thin_only()) && (atomic || c.opcode != cdb::opcode::WRITE_ATOMIC_16)
    };
    let has_sa = cdb::has_service_actions(req.opcode);
    let data = match req.options {
        0 => {
            let descriptors: Vec<u8> = cdb::SUPPORTED_COMMANDS
                .iter()
                .filter(offered)
                .flat_map(|c| command_descriptor(c, req.rctd))
                .collect();
            let mut d = (descriptors.len() as u32).to_be_bytes().to_vec();
            d.extend(descriptors);
            d
        }
        1 if has_sa => return Completion::check(Sense::invalid_field_in_cdb(3, None)),
        2 if !has_sa => return Completion::check(Sense::invalid_field_in_cdb(3, None)),
        _ => {
            let sa = has_sa.then_some(req.service_action);
            let info = cdb::supported_command(req.opcode, sa).filter(offered);
            one_command(info, req.rctd)
        }
    };
    good(data, req.alloc_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::Status;
    use crate::scsi::sense::SenseKey;

    fn info() -> LunInfo {
        LunInfo {
            lun: 0,
            volume_name: "vol0".into(),
            target_name: "iqn.2024-01.io.shoal:t1".into(),
            relative_port_id: 1,
            block_size: 512,
            physical_block_size: 4096,
            num_blocks: 1 << 21,
            naa: [
                0x60, 0x01, 0x40, 0x5F, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ],
            serial: "SN0001".into(),
            read_only: false,
            thin: false,
            extent_size: 0,
            write_cache: true,
            max_transfer_blocks: 2048,
            max_atomic_blocks: 2048,
        }
    }

    const WCE_ON: ModeState = ModeState {
        wce: true,
        swp: false,
    };
    const WCE_OFF: ModeState = ModeState {
        wce: false,
        swp: false,
    };

    fn ms(ten: bool, dbd: bool, llbaa: bool, pc: PageControl, page: u8, alloc: u32) -> ModeSense {
        ModeSense {
            ten,
            dbd,
            llbaa,
            pc,
            page_code: page,
            subpage_code: 0,
            alloc_len: alloc,
        }
    }

    #[test]
    fn report_target_port_groups_one_active_optimized_group() {
        let info = LunInfo {
            relative_port_id: 1,
            ..LunInfo::default()
        };
        let d = report_target_port_groups(&info, false, 1024).data;
        assert_eq!(
            d,
            vec![0, 0, 0, 12, 0x80, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
        );
        let x = report_target_port_groups(&info, true, 1024).data;
        assert_eq!(&x[..8], &[0, 0, 0, 16, 0x10, 0, 0, 0]);
        assert_eq!(&x[8..], &d[4..]);
        assert_eq!(
            report_target_port_groups(&info, false, 4).data,
            vec![0, 0, 0, 12]
        );
    }

    #[test]
    fn standard_inquiry_exact_bytes() {
        let d = standard_inquiry(PERIPHERAL_DIRECT_ACCESS);
        assert_eq!(d.len(), 96);
        assert_eq!(&d[..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x18, 0x00, 0x02]);
        assert_eq!(&d[8..16], b"SHOAL   ");
        assert_eq!(&d[16..32], b"Shoal Volume    ");
        assert_eq!(&d[32..36], b"0001");
        assert!(d[36..58].iter().all(|&b| b == 0));
        assert_eq!(
            &d[58..66],
            &[0x00, 0xA0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xC0]
        );
        assert!(d[66..].iter().all(|&b| b == 0));
        assert_eq!(standard_inquiry(PERIPHERAL_NO_LUN)[0], 0x7F);
    }

    #[test]
    fn inquiry_allocation_length_truncates() {
        let i = info();
        assert_eq!(inquiry(&i, false, 0, 0).data, Vec::<u8>::new());
        assert_eq!(inquiry(&i, false, 0, 5).data.len(), 5);
        assert_eq!(inquiry(&i, false, 0, 36).data.len(), 36);
        assert_eq!(inquiry(&i, false, 0, 511), inquiry(&i, false, 0, 512));
        assert_eq!(inquiry(&i, true, 0x83, 3).data.len(), 3);
    }

    #[test]
    fn inquiry_unknown_vpd_page_is_invalid_field() {
        let c = inquiry(&info(), true, 0x81, 255);
        assert_eq!(c.status, Status::CheckCondition);
        assert_eq!(c.sense, Some(Sense::invalid_field_in_cdb(2, None)));
    }

    #[test]
    fn supported_vpd_pages_sorted_and_all_readable() {
        let i = info();
        let d = inquiry(&i, true, 0x00, 255).data;
        assert_eq!(&d[..4], &[0x00, 0x00, 0x00, 8]);
        assert_eq!(&d[4..], &SUPPORTED_VPD_PAGES);
        assert!(d[4..].windows(2).all(|w| w[0] < w[1]));
        for &p in &SUPPORTED_VPD_PAGES {
            let c = inquiry(&i, true, p, 255);
            assert_eq!(c.status, Status::Good);
            assert_eq!(c.data[1], p);
            assert_eq!(
                usize::from(u16::from_be_bytes([c.data[2], c.data[3]])) + 4,
                c.data.len()
            );
        }
    }

    #[test]
    fn unit_serial_number_page() {
        let d = inquiry(&info(), true, 0x80, 255).data;
        assert_eq!(d, b"\x00\x80\x00\x06SN0001".to_vec());
        let mut i = info();
        i.serial = "a\u{1}b".into();
        assert_eq!(&inquiry(&i, true, 0x80, 255).data[4..], b"a_b");
    }

    #[test]
    fn device_identification_exact_bytes() {
        let d = inquiry(&info(), true, 0x83, 1024).data;
        let mut want = vec![0x00, 0x83, 0x00, 0x00];
        // NAA IEEE Registered Extended, LU association.
        want.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
        want.extend_from_slice(&info().naa);
        // T10 vendor ID: "SHOAL   " + serial.
        want.extend_from_slice(&[0x02, 0x01, 0x00, 14]);
        want.extend_from_slice(b"SHOAL   SN0001");
        // SCSI name string, iSCSI, PIV, target device: 23 chars + NUL = 24 bytes.
        want.extend_from_slice(&[0x53, 0xA8, 0x00, 24]);
        want.extend_from_slice(b"iqn.2024-01.io.shoal:t1\0");
        // Relative target port 1, iSCSI, PIV, target port.
        want.extend_from_slice(&[0x51, 0x94, 0x00, 4, 0, 0, 0, 1]);
        // Target port group 1, iSCSI, PIV, target port.
        want.extend_from_slice(&[0x51, 0x95, 0x00, 4, 0, 0, 0, 1]);
        let len = (want.len() - 4) as u16;
        want[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(d, want);
    }

    #[test]
    fn scsi_name_string_padding() {
        assert_eq!(scsi_name_string("abc"), b"abc\0".to_vec());
        assert_eq!(scsi_name_string("abcd"), b"abcd\0\0\0\0".to_vec());
        let long = "x".repeat(300);
        let s = scsi_name_string(&long);
        assert_eq!(s.len(), 252);
        assert_eq!(s[251], 0);
    }

    #[test]
    fn extended_inquiry_page() {
        let d = inquiry(&info(), true, 0x86, 255).data;
        assert_eq!(d.len(), 64);
        assert_eq!(&d[..8], &[0x00, 0x86, 0x00, 0x3C, 0x00, 0x01, 0x00, 0x01]);
        assert!(d[8..].iter().all(|&b| b == 0));
    }

    /// A thin LU of 512-byte blocks in 64 KiB extents.
    fn thin_info() -> LunInfo {
        LunInfo {
            thin: true,
            extent_size: 64 << 10,
            ..info()
        }
    }

    #[test]
    fn block_limits_page() {
        let d = inquiry(&info(), true, 0xB0, 255).data;
        let mut want = vec![0u8; 64];
        want[..4].copy_from_slice(&[0x00, 0xB0, 0x00, 0x3C]);
        want[4] = 0x01; // WSNZ
        want[5] = 64; // MAXIMUM COMPARE AND WRITE LENGTH
        want[6..8].copy_from_slice(&[0, 8]); // 4096 / 512
        want[8..12].copy_from_slice(&2048u32.to_be_bytes());
        // MAXIMUM WRITE SAME LENGTH: 16 MiB of 512-byte blocks. No unmap limits: not thin.
        want[36..44].copy_from_slice(&32768u64.to_be_bytes());
        // MAXIMUM ATOMIC TRANSFER LENGTH; alignment, granularity and boundaries 0.
        want[44..48].copy_from_slice(&2048u32.to_be_bytes());
        assert_eq!(d, want);
        // An LU that cannot write atomically reports no atomic length.
        let none = LunInfo {
            max_atomic_blocks: 0,
            ..info()
        };
        let d = inquiry(&none, true, 0xB0, 255).data;
        assert_eq!(&d[44..64], &[0u8; 20]);
    }

    #[test]
    fn block_limits_page_thin() {
        let d = inquiry(&thin_info(), true, 0xB0, 255).data;
        let mut want = vec![0u8; 64];
        want[..4].copy_from_slice(&[0x00, 0xB0, 0x00, 0x3C]);
        want[4] = 0x01; // WSNZ
        want[5] = 64; // MAXIMUM COMPARE AND WRITE LENGTH
        want[6..8].copy_from_slice(&[0, 8]);
        want[8..12].copy_from_slice(&2048u32.to_be_bytes());
        want[20..24].copy_from_slice(&(512u32 << 10).to_be_bytes()); // 256 MiB of blocks
        want[24..28].copy_from_slice(&256u32.to_be_bytes());
        want[28..32].copy_from_slice(&128u32.to_be_bytes()); // 64 KiB / 512
        want[32..36].copy_from_slice(&[0x80, 0, 0, 0]); // UGAVALID, alignment 0
        want[36..44].copy_from_slice(&32768u64.to_be_bytes());
        want[44..48].copy_from_slice(&2048u32.to_be_bytes());
        assert_eq!(d, want);
        // 4096-byte blocks, extent size unknown: no granularity reported (UGAVALID=0).
        let big = LunInfo {
            block_size: 4096,
            physical_block_size: 4096,
            extent_size: 0,
            ..thin_info()
        };
        let d = inquiry(&big, true, 0xB0, 255).data;
        assert_eq!(&d[6..8], &[0, 1]);
        assert_eq!(&d[20..24], &65536u32.to_be_bytes());
        assert_eq!(&d[24..28], &256u32.to_be_bytes());
        assert_eq!(&d[28..36], &[0; 8]);
        assert_eq!(&d[36..44], &4096u64.to_be_bytes());
        // libiscsi's sanity bounds: 2^LBPPBE <= MAXIMUM UNMAP LBA COUNT <= 1 Mi, MAXIMUM
        // WRITE SAME LENGTH in 256..65536.
        for bs in [512u32, 4096] {
            let i = LunInfo {
                block_size: bs,
                ..thin_info()
            };
            let d = inquiry(&i, true, 0xB0, 255).data;
            let max_unmap = u32::from_be_bytes([d[20], d[21], d[22], d[23]]);
            assert!(max_unmap >= i.logical_per_physical() && max_unmap <= 1 << 20);
            let ws = u64::from_be_bytes(d[36..44].try_into().unwrap());
            assert!((256..65536).contains(&ws));
        }
    }

    #[test]
    fn block_device_characteristics_page() {
        let d = inquiry(&info(), true, 0xB1, 255).data;
        assert_eq!(d.len(), 64);
        assert_eq!(&d[..8], &[0x00, 0xB1, 0x00, 0x3C, 0x00, 0x01, 0x00, 0x00]);
        let d = inquiry(&thin_info(), true, 0xB1, 255).data;
        assert_eq!(
            d[7], 0x40,
            "WABEREQ 01b where SANITIZE BLOCK ERASE is implemented"
        );
    }

    #[test]
    fn logical_block_provisioning_page() {
        let d = inquiry(&info(), true, 0xB2, 255).data;
        assert_eq!(d, vec![0x00, 0xB2, 0x00, 0x04, 0, 0, 0, 0]);
        let d = inquiry(&thin_info(), true, 0xB2, 255).data;
        // LBPU, LBPWS, LBPWS10, LBPRZ; ANC_SUP=0, DP=0; PROVISIONING TYPE thin.
        assert_eq!(d, vec![0x00, 0xB2, 0x00, 0x04, 0, 0xE4, 0x02, 0]);
        // Read-only (an exported snapshot) is still thin.
        let ro = LunInfo {
            read_only: true,
            ..thin_info()
        };
        assert_eq!(inquiry(&ro, true, 0xB2, 255).data, d);
        assert_eq!(inquiry(&thin_info(), true, 0xB2, 6).data, &d[..6]);
    }

    #[test]
    fn report_luns_layout_and_select() {
        let c = report_luns(0, 512, &[0]);
        assert_eq!(c.data, vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let c = report_luns(2, 512, &[1, 300]);
        assert_eq!(&c.data[..4], &[0, 0, 0, 16]);
        assert_eq!(&c.data[8..10], &[0x00, 0x01]);
        assert_eq!(&c.data[16..18], &[0x41, 0x2C]);
        let c = report_luns(1, 512, &[0]);
        assert_eq!(c.data, vec![0; 8]);
        assert_eq!(report_luns(0, 16, &[0, 1]).data.len(), 16);
    }

    #[test]
    fn request_sense_formats_and_truncation() {
        let c = request_sense(false, 252, &Sense::no_sense());
        assert_eq!(c.status, Status::Good);
        assert_eq!(c.data, Sense::no_sense().to_bytes());
        let c = request_sense(true, 252, &Sense::power_on_reset());
        assert_eq!(c.data, vec![0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
        assert_eq!(request_sense(false, 8, &Sense::no_sense()).data.len(), 8);
        assert!(request_sense(false, 0, &Sense::no_sense()).data.is_empty());
    }

    #[test]
    fn mode_sense6_all_pages_exact_bytes() {
        let c = mode_sense(
            &info(),
            &ms(false, false, false, PageControl::Current, 0x3F, 255),
            &WCE_ON,
            &WCE_ON,
        );
        let d = c.data;
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
        assert_eq!(&d[..4], &[(d.len() - 1) as u8, 0x00, 0x10, 0x08]);
        // Short block descriptor: 2^21 blocks of 512 bytes.
        assert_eq!(&d[4..12], &[0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00]);
        // Caching page, WCE=1.
        assert_eq!(&d[12..16], &[0x08, 0x12, 0x04, 0x00]);
        assert!(d[16..32].iter().all(|&b| b == 0));
        // Control page.
        assert_eq!(
            &d[32..44],
            &[
                0x0A, 0x0A, 0x02, 0x10, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00
            ]
        );
        // Informational exceptions control page.
        assert_eq!(&d[44..56], &[0x1C, 0x0A, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn mode_sense_write_protect_and_dbd() {
        let mut ro = info();
        ro.read_only = true;
        let d = mode_sense(
            &ro,
            &ms(false, true, false, PageControl::Current, 0x08, 255),
            &WCE_OFF,
            &WCE_ON,
        )
        .data;
        assert_eq!(&d[..4], &[23, 0x00, 0x90, 0x00]);
        assert_eq!(&d[4..8], &[0x08, 0x12, 0x00, 0x00]); // WCE=0 current
    }

    #[test]
    fn mode_sense_page_control_variants() {
        let i = info();
        let pc = |pc| {
            mode_sense(
                &i,
                &ms(false, true, false, pc, 0x08, 255),
                &WCE_OFF,
                &WCE_ON,
            )
        };
        assert_eq!(pc(PageControl::Current).data[6], 0x00);
        assert_eq!(pc(PageControl::Default).data[6], 0x04);
        assert_eq!(pc(PageControl::Changeable).data[6], 0x04);
        let saved = pc(PageControl::Saved);
        assert_eq!(saved.sense, Some(Sense::saving_parameters_not_supported()));
        let c = mode_sense(
            &i,
            &ms(false, true, false, PageControl::Changeable, 0x0A, 255),
            &WCE_OFF,
            &WCE_ON,
        );
        // Only SWP is changeable in the control page.
        assert_eq!(&c.data[4..], &[0x0A, 0x0A, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn mode_sense10_long_lba_descriptor() {
        let mut big = info();
        big.num_blocks = 0x1_0000_0001;
        let d = mode_sense(
            &big,
            &ms(true, false, true, PageControl::Current, 0x0A, 1024),
            &WCE_ON,
            &WCE_ON,
        )
        .data;
        assert_eq!(d.len(), 8 + 16 + 12);
        assert_eq!(&d[..8], &[0x00, 34, 0x00, 0x10, 0x01, 0x00, 0x00, 16]);
        assert_eq!(&d[8..16], &0x1_0000_0001u64.to_be_bytes());
        assert_eq!(&d[20..24], &512u32.to_be_bytes());
        // Short descriptor saturates.
        let d = mode_sense(
            &big,
            &ms(true, false, false, PageControl::Current, 0x0A, 1024),
            &WCE_ON,
            &WCE_ON,
        )
        .data;
        assert_eq!(&d[4..8], &[0, 0, 0, 8]);
        assert_eq!(&d[8..12], &[0xFF; 4]);
    }

    #[test]
    fn mode_sense_invalid_page_or_subpage() {
        let i = info();
        let c = mode_sense(
            &i,
            &ms(false, false, false, PageControl::Current, 0x19, 255),
            &WCE_ON,
            &WCE_ON,
        );
        assert_eq!(c.sense, Some(Sense::invalid_field_in_cdb(2, Some(5))));
        let mut req = ms(false, false, false, PageControl::Current, 0x3F, 255);
        req.subpage_code = 0x01;
        assert_eq!(
            mode_sense(&i, &req, &WCE_ON, &WCE_ON).sense,
            Some(Sense::invalid_field_in_cdb(3, None))
        );
        req.subpage_code = 0xFF;
        assert_eq!(mode_sense(&i, &req, &WCE_ON, &WCE_ON).status, Status::Good);
    }

    #[test]
    fn mode_sense_truncation() {
        let i = info();
        let c = mode_sense(
            &i,
            &ms(false, false, false, PageControl::Current, 0x3F, 4),
            &WCE_ON,
            &WCE_ON,
        );
        assert_eq!(c.data.len(), 4);
        assert_eq!(c.data[0], 55);
        assert!(
            mode_sense(
                &i,
                &ms(false, false, false, PageControl::Current, 0x3F, 0),
                &WCE_ON,
                &WCE_ON
            )
            .data
            .is_empty()
        );
    }

    /// A MODE SELECT (6) parameter list with `pages`, no block descriptor.
    fn select6(pages: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0, 0, 0, 0];
        for page in pages {
            p.extend_from_slice(page);
        }
        p
    }

    fn page(code: u8, pc: PageControl, cur: &ModeState) -> Vec<u8> {
        mode_page(code, pc, cur, &WCE_ON).unwrap()
    }

    #[test]
    fn mode_select_changes_wce() {
        let i = info();
        let mut caching = page(0x08, PageControl::Current, &WCE_ON);
        caching[2] = 0x00;
        assert_eq!(
            mode_select(&i, &WCE_ON, &WCE_ON, false, &select6(&[caching])),
            Ok(WCE_OFF)
        );
    }

    #[test]
    fn mode_select_round_trips_current_pages() {
        let i = info();
        let pages: Vec<Vec<u8>> = MODE_PAGES
            .iter()
            .map(|&p| page(p, PageControl::Current, &WCE_ON))
            .collect();
        assert_eq!(
            mode_select(&i, &WCE_ON, &WCE_ON, false, &select6(&pages)),
            Ok(WCE_ON)
        );
        // MODE SELECT (10) with a short block descriptor too; PS bit ignored.
        let mut p = vec![0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x02, 0x00];
        let mut control = page(0x0A, PageControl::Current, &WCE_ON);
        control[0] |= 0x80;
        p.extend(control);
        assert_eq!(mode_select(&i, &WCE_ON, &WCE_ON, true, &p), Ok(WCE_ON));
        // Long LBA descriptor with the current capacity.
        let mut p = vec![0, 0, 0, 0, 1, 0, 0, 16];
        p.extend_from_slice(&(1u64 << 21).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 2, 0]);
        assert_eq!(mode_select(&i, &WCE_OFF, &WCE_ON, true, &p), Ok(WCE_OFF));
    }

    #[test]
    fn mode_select_rejects_unchangeable_fields() {
        let i = info();
        let mut control = page(0x0A, PageControl::Current, &WCE_ON);
        control[4] |= 0x10; // UA_INTLCK_CTRL: not changeable
        assert_eq!(
            mode_select(&i, &WCE_ON, &WCE_ON, false, &select6(&[control.clone()])),
            Err(Sense::invalid_field_in_parameter_list_bit(8, Some(4)))
        );
        // SWP is changeable, and MODE SENSE reports it.
        control[4] = 0x08;
        let swp = ModeState {
            swp: true,
            ..WCE_ON
        };
        assert_eq!(
            mode_select(&i, &WCE_ON, &WCE_ON, false, &select6(&[control.clone()])),
            Ok(swp)
        );
        assert_eq!(page(0x0A, PageControl::Current, &swp), control);
        assert_eq!(page(0x0A, PageControl::Changeable, &WCE_ON)[4], 0x08);
        let mut caching = page(0x08, PageControl::Current, &WCE_ON);
        caching[2] = 0x05; // RCD
        assert_eq!(
            mode_select(&i, &WCE_ON, &WCE_ON, false, &select6(&[caching])),
            Err(Sense::invalid_field_in_parameter_list_bit(6, Some(0)))
        );
        let mut iec = page(0x1C, PageControl::Current, &WCE_ON);
        iec[3] = 0x06; // MRIE
        assert!(mode_select(&i, &WCE_ON, &WCE_ON, false, &select6(&[iec])).is_err());
    }

    #[test]
    fn mode_select_is_atomic() {
        let i = info();
        let mut caching = page(0x08, PageControl::Current, &WCE_ON);
        caching[2] = 0;
        let mut control = page(0x0A, PageControl::Current, &WCE_ON);
        control[2] |= 0x04; // D_SENSE
        assert!(mode_select(&i, &WCE_ON, &WCE_ON, false, &select6(&[caching, control])).is_err());
    }

    #[test]
    fn mode_select_parameter_list_errors() {
        let i = info();
        let s = |p: &[u8]| mode_select(&i, &WCE_ON, &WCE_ON, false, p);
        assert_eq!(s(&[]), Ok(WCE_ON));
        assert_eq!(s(&[0, 0]), Err(Sense::parameter_list_length_error()));
        assert_eq!(
            s(&[0, 5, 0, 0]),
            Err(Sense::invalid_field_in_parameter_list(1))
        );
        assert_eq!(
            s(&[0, 0, 0, 4]),
            Err(Sense::invalid_field_in_parameter_list(3))
        );
        assert_eq!(
            s(&[0, 0, 0, 8, 0, 0]),
            Err(Sense::parameter_list_length_error())
        );
        // Truncated page.
        assert_eq!(
            s(&[0, 0, 0, 0, 0x08, 0x12, 0x04]),
            Err(Sense::parameter_list_length_error())
        );
        // Wrong page length.
        assert_eq!(
            s(&[0, 0, 0, 0, 0x08, 0x0A, 0x04]),
            Err(Sense::invalid_field_in_parameter_list(5))
        );
        // Unknown page, subpage format.
        assert_eq!(
            s(&[0, 0, 0, 0, 0x19, 0x02, 0, 0]),
            Err(Sense::invalid_field_in_parameter_list_bit(4, Some(5)))
        );
        assert_eq!(
            s(&[0, 0, 0, 0, 0x48, 0x00, 0, 0]),
            Err(Sense::invalid_field_in_parameter_list_bit(4, Some(6)))
        );
        // Block descriptor with another block length or capacity.
        let bd = |blocks: u32, len: u32| {
            let mut p = vec![0, 0, 0, 8];
            p.extend_from_slice(&blocks.to_be_bytes());
            p.push(0);
            p.extend_from_slice(&len.to_be_bytes()[1..]);
            p
        };
        assert_eq!(s(&bd(0, 512)), Ok(WCE_ON));
        assert_eq!(s(&bd(1 << 21, 512)), Ok(WCE_ON));
        assert_eq!(
            s(&bd(0, 4096)),
            Err(Sense::invalid_field_in_parameter_list(9))
        );
        assert_eq!(
            s(&bd(5, 512)),
            Err(Sense::invalid_field_in_parameter_list(4))
        );
    }

    /// REPORT SUPPORTED OPERATION CODES of a thin LU.
    fn rsoc(
        rctd: bool,
        options: u8,
        opcode: u8,
        service_action: u16,
        alloc_len: u32,
    ) -> Completion {
        rsoc_of(true, rctd, options, opcode, service_action, alloc_len)
    }

    fn rsoc_of(
        thin: bool,
        rctd: bool,
        options: u8,
        opcode: u8,
        service_action: u16,
        alloc_len: u32,
    ) -> Completion {
        report_supported_opcodes(
            &RsocRequest {
                rctd,
                options,
                opcode,
                service_action,
                alloc_len,
            },
            thin,
            true,
        )
    }

    #[test]
    fn rsoc_thin_only_commands() {
        // Listed for a thin LU ...
        let d = rsoc(false, 1, 0x42, 0, 65535).data;
        assert_eq!(&d[..4], &[0, 0x03, 0, 10]);
        assert_eq!(&d[4..], &[0x42, 0x01, 0, 0, 0, 0, 0x00, 0xFF, 0xFF, 0x04]);
        let d = rsoc(false, 2, 0x9E, 0x12, 65535).data;
        assert_eq!(&d[..6], &[0, 0x03, 0, 16, 0x9E, 0x12]);
        let all = rsoc(false, 0, 0, 0, 65535).data;
        assert!(all[4..].chunks(8).any(|c| c[0] == 0x42));
        // ... not for a fully provisioned one, where WRITE SAME still is.
        assert_eq!(
            rsoc_of(false, false, 1, 0x42, 0, 65535).data,
            vec![0, 0x01, 0, 0]
        );
        assert_eq!(
            rsoc_of(false, false, 2, 0x9E, 0x12, 65535).data,
            vec![0, 0x01, 0, 0]
        );
        assert_eq!(rsoc_of(false, false, 2, 0x9E, 0x10, 65535).data[1], 0x03);
        assert_eq!(rsoc_of(false, false, 1, 0x41, 0, 65535).data[1], 0x03);
        assert_eq!(rsoc_of(false, false, 1, 0x93, 0, 65535).data[1], 0x03);
        let all = rsoc_of(false, false, 0, 0, 0, 65535).data;
        let n = cdb::SUPPORTED_COMMANDS.len() - 3; // UNMAP, GET LBA STATUS, BLOCK ERASE
        assert_eq!(
            u32::from_be_bytes([all[0], all[1], all[2], all[3]]) as usize,
            n * 8
        );
        assert!(!all[4..].chunks(8).any(|c| c[0] == 0x42));
        assert!(!all[4..].chunks(8).any(|c| c[0] == 0x9E && c[3] == 0x12));
        assert!(!all[4..].chunks(8).any(|c| c[0] == 0x48 && c[3] == 0x02));
        assert!(all[4..].chunks(8).any(|c| c[0] == 0x48 && c[3] == 0x1F));
    }

    #[test]
    fn rsoc_all_commands_layout() {
        let c = rsoc(false, 0, 0, 0, 65535);
        let d = c.data;
        let n = cdb::SUPPORTED_COMMANDS.len();
        assert_eq!(u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize, n * 8);
        assert_eq!(d.len(), 4 + n * 8);
        // First descriptor: TEST UNIT READY, no SA, CDB length 6.
        assert_eq!(&d[4..12], &[0x00, 0, 0, 0, 0, 0x00, 0, 6]);
        // READ CAPACITY (16) descriptor carries SERVACTV and SA 10h.
        let rc16 = d[4..].chunks(8).find(|c| c[0] == 0x9E).unwrap();
        assert_eq!(rc16, &[0x9E, 0, 0x00, 0x10, 0, 0x01, 0, 16]);
        // Allocation length truncates.
        assert_eq!(rsoc(false, 0, 0, 0, 10).data.len(), 10);
    }

    #[test]
    fn rsoc_all_commands_with_timeouts() {
        let d = rsoc(true, 0, 0, 0, 65535).data;
        let n = cdb::SUPPORTED_COMMANDS.len();
        assert_eq!(d.len(), 4 + n * 20);
        for desc in d[4..].chunks(20) {
            assert_eq!(desc[5] & 0x02, 0x02); // CTDP
            assert_eq!(&desc[8..10], &[0x00, 0x0A]);
        }
    }

    #[test]
    fn rsoc_one_command() {
        let d = rsoc(false, 1, 0x28, 0, 65535).data;
        assert_eq!(&d[..4], &[0, 0x03, 0, 10]);
        assert_eq!(&d[4..], cdb::supported_command(0x28, None).unwrap().usage);
        let d = rsoc(true, 1, 0x28, 0, 65535).data;
        assert_eq!(d[1], 0x83);
        assert_eq!(d.len(), 4 + 10 + 12);
        // Unsupported opcode: SUPPORT 001b.
        assert_eq!(rsoc(false, 1, 0x8C, 0, 65535).data, vec![0, 0x01, 0, 0]);
        // Opcode with service actions asked without one.
        assert_eq!(
            rsoc(false, 1, 0x9E, 0x10, 65535).sense,
            Some(Sense::invalid_field_in_cdb(3, None))
        );
    }

    #[test]
    fn rsoc_one_command_with_service_action() {
        let d = rsoc(false, 2, 0x9E, 0x10, 65535).data;
        assert_eq!(&d[..4], &[0, 0x03, 0, 16]);
        assert_eq!(&d[4..6], &[0x9E, 0x10]);
        assert_eq!(rsoc(false, 2, 0x9E, 0x11, 65535).data, vec![0, 0x01, 0, 0]);
        assert_eq!(
            rsoc(false, 2, 0x28, 0, 65535).sense,
            Some(Sense::invalid_field_in_cdb(3, None))
        );
        // Option 3 accepts both.
        assert_eq!(rsoc(false, 3, 0x28, 7, 65535).data[1], 0x03);
        assert_eq!(rsoc(false, 3, 0xA3, 0x0C, 65535).data[1], 0x03);
        assert_eq!(rsoc(false, 3, 0xA3, 0x0A, 65535).data[1], 0x03);
        assert_eq!(rsoc(false, 3, 0xA3, 0x05, 65535).data[1], 0x01);
    }

    #[test]
    fn rsoc_every_listed_command_answers_one_command() {
        for c in cdb::SUPPORTED_COMMANDS {
            let options = if c.service_action.is_some() { 2 } else { 1 };
            let r = rsoc(
                false,
                options,
                c.opcode,
                c.service_action.unwrap_or(0),
                65535,
            );
            assert_eq!(r.status, Status::Good);
            assert_eq!(r.data[4], c.opcode);
            let wrong = rsoc(
                false,
                3 - options,
                c.opcode,
                c.service_action.unwrap_or(0),
                65535,
            );
            assert_eq!(wrong.sense.map(|s| s.key), Some(SenseKey::IllegalRequest));
        }
    }
}
