//! SCSI status codes and sense data.
//!
//! Owns the STATUS byte values (SAM-5 5.3, table 28), the sense keys (SPC-4 4.5.6, table 48) and
//! the sense data the device server returns with CHECK CONDITION or from REQUEST SENSE:
//! - fixed format sense data, response code 70h (SPC-4 4.5.3), always 18 bytes here;
//! - descriptor format sense data, response code 72h (SPC-4 4.5.2) with the information
//!   (4.5.2.2) and sense-key-specific (4.5.2.4) descriptors, returned only when REQUEST SENSE asks
//!   for it with DESC=1;
//! - the sense-key-specific field pointer (SPC-4 4.5.2.4.2) that points at the CDB or
//!   parameter-list byte (and bit) in error.
//!
//! Every condition this target reports has a named constructor, so the additional sense codes
//! (SPC-4 annex D) appear in exactly one place.

/// SCSI STATUS byte values (SAM-5 table 28).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The command completed successfully.
    Good = 0x00,
    /// Sense data describes an error or exception.
    CheckCondition = 0x02,
    /// PRE-FETCH: the requested blocks fit in the cache.
    ConditionMet = 0x04,
    /// The logical unit is busy.
    Busy = 0x08,
    /// The command conflicts with a reservation.
    ReservationConflict = 0x18,
    /// The task set is full.
    TaskSetFull = 0x28,
    /// The command was aborted by another I_T nexus (TAS=1).
    TaskAborted = 0x40,
}

impl Status {
    /// The status byte as sent on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Sense keys (SPC-4 table 48).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    /// No specific sense key information.
    NoSense = 0x0,
    /// The command completed after recovery action.
    RecoveredError = 0x1,
    /// The logical unit is not accessible.
    NotReady = 0x2,
    /// Non-recovered error on the medium.
    MediumError = 0x3,
    /// Non-recoverable hardware failure.
    HardwareError = 0x4,
    /// An illegal parameter in the CDB or parameter list.
    IllegalRequest = 0x5,
    /// A unit attention condition was reported.
    UnitAttention = 0x6,
    /// The medium is protected against the attempted operation.
    DataProtect = 0x7,
    /// Blank medium (sequential devices).
    BlankCheck = 0x8,
    /// Vendor specific condition.
    VendorSpecific = 0x9,
    /// An EXTENDED COPY was aborted.
    CopyAborted = 0xA,
    /// The device server aborted the command.
    AbortedCommand = 0xB,
    /// A buffered device reached the end of the partition.
    VolumeOverflow = 0xD,
    /// Source data did not match the medium (VERIFY, COMPARE AND WRITE).
    Miscompare = 0xE,
    /// A command completed with sense data to report.
    Completed = 0xF,
}

impl SenseKey {
    /// The 4-bit sense key value.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The sense-key-specific FIELD POINTER (SPC-4 4.5.2.4.2): which byte (and optionally which bit)
/// of the CDB or of the parameter list is in error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// C/D bit: true when the error is in the CDB, false when in the parameter list (Data-Out).
    pub in_cdb: bool,
    /// Byte offset of the field in error.
    pub byte: u16,
    /// Bit pointer (0..=7, the most significant bit of the field in error), when known; sets BPV.
    pub bit: Option<u8>,
}

impl FieldPointer {
    /// The three sense-key-specific bytes: SKSV, C/D, BPV, BIT POINTER, FIELD POINTER.
    pub fn to_bytes(self) -> [u8; 3] {
        let mut first = 0x80; // SKSV
        if self.in_cdb {
            first |= 0x40;
        }
        if let Some(bit) = self.bit {
            first |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [first, hi, lo]
    }
}

/// Sense data for one condition: sense key, additional sense code (ASC) and qualifier (ASCQ),
/// plus the optional INFORMATION field and sense-key-specific field pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sense {
    /// The sense key.
    pub key: SenseKey,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (VALID bit), e.g. the miscompare offset.
    pub information: Option<u64>,
    /// The sense-key-specific field (SKSV bit), when there is one.
    pub key_specific: Option<KeySpecific>,
}

/// The SENSE KEY SPECIFIC field (SPC-4 4.5.2.4): its meaning depends on the sense key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySpecific {
    /// FIELD POINTER (ILLEGAL REQUEST): the byte and bit in error.
    Field(FieldPointer),
    /// PROGRESS INDICATION (NOT READY): the fraction of a long operation done, in 65536ths.
    Progress(u16),
}

impl KeySpecific {
    /// The three bytes, SKSV set.
    fn to_bytes(self) -> [u8; 3] {
        match self {
            KeySpecific::Field(fp) => fp.to_bytes(),
            KeySpecific::Progress(done) => {
                let [hi, lo] = done.to_be_bytes();
                [0x80, hi, lo]
            }
        }
    }
}

/// Length of fixed format sense data as built by [`Sense::to_bytes`].
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    /// Sense data with the given key, ASC and ASCQ, no INFORMATION and no field pointer.
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Sense {
            key,
            asc,
            ascq,
            information: None,
            key_specific: None,
        }
    }

    /// This sense with the INFORMATION field set.
    pub const fn with_information(mut self, information: u64) -> Self {
        self.information = Some(information);
        self
    }

    /// This sense with a sense-key-specific field pointer.
    pub const fn with_field_pointer(mut self, pointer: FieldPointer) -> Self {
        self.key_specific = Some(KeySpecific::Field(pointer));
        self
    }

    /// This sense with a sense-key-specific progress indication (`done` of 65536).
    pub const fn with_progress(mut self, done: u16) -> Self {
        self.key_specific = Some(KeySpecific::Progress(done));
        self
    }

    /// Whether the sense key is UNIT ATTENTION.
    pub fn is_unit_attention(&self) -> bool {
        self.key == SenseKey::UnitAttention
    }

    /// Fixed format sense data (SPC-4 4.5.3), response code 70h, 18 bytes.
    ///
    /// An INFORMATION value that does not fit the 4-byte field is left out (VALID=0), as SPC-4
    /// requires; descriptor format carries all 8 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        b[2] = self.key.code();
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            b[0] |= 0x80; // VALID
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[7] = (FIXED_SENSE_LEN - 8) as u8; // ADDITIONAL SENSE LENGTH
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(sks) = self.key_specific {
            b[15..18].copy_from_slice(&sks.to_bytes());
        }
        b
    }

    /// Descriptor format sense data (SPC-4 4.5.2), response code 72h, with an information
    /// descriptor and a sense key specific descriptor when those fields are present.
    pub fn to_descriptor_bytes(&self) -> Vec<u8> {
        let mut b = vec![0x72, self.key.code(), self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.information {
            // Information descriptor (4.5.2.2): type 00h, length 0Ah, VALID.
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.key_specific {
            // Sense key specific descriptor (4.5.2.4): type 02h, length 06h.
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&sks.to_bytes());
            b.push(0x00);
        }
        b[7] = (b.len() - 8) as u8; // ADDITIONAL SENSE LENGTH
        b
    }

    // ---- NO SENSE ----

    /// NO SENSE, NO ADDITIONAL SENSE INFORMATION (00/00/00): REQUEST SENSE with nothing pending.
    pub const fn no_sense() -> Self {
        Sense::new(SenseKey::NoSense, 0x00, 0x00)
    }

    // ---- ILLEGAL REQUEST ----

    /// INVALID COMMAND OPERATION CODE (05/20/00).
    pub const fn invalid_opcode() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x20, 0x00)
    }

    /// INVALID FIELD IN CDB (05/24/00) pointing at CDB byte `byte` (and bit `bit` when known).
    pub const fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x24, 0x00).with_field_pointer(FieldPointer {
            in_cdb: true,
            byte,
            bit,
        })
    }

    /// INVALID FIELD IN CDB (05/24/00) without a field pointer (e.g. a CDB shorter than its
    /// operation code's length, where no byte can be pointed at).
    pub const fn invalid_field_in_cdb_unspecified() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x24, 0x00)
    }

    /// INVALID FIELD IN PARAMETER LIST (05/26/00) pointing at parameter-list byte `byte` (C/D=0).
    pub const fn invalid_field_in_parameter_list(byte: u16) -> Self {
        Sense::invalid_field_in_parameter_list_bit(byte, None)
    }

    /// INVALID FIELD IN PARAMETER LIST (05/26/00) pointing at a byte and, when known, a bit.
    pub const fn invalid_field_in_parameter_list_bit(byte: u16, bit: Option<u8>) -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x26, 0x00).with_field_pointer(FieldPointer {
            in_cdb: false,
            byte,
            bit,
        })
    }

    /// PARAMETER LIST LENGTH ERROR (05/1A/00).
    pub const fn parameter_list_length_error() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x1A, 0x00)
    }

    /// TOO MANY TARGET DESCRIPTORS (05/26/06): an EXTENDED COPY names more copy targets (CSCD
    /// descriptors) than the copy manager takes.
    pub const fn too_many_target_descriptors() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x26, 0x06)
    }

    /// UNSUPPORTED TARGET DESCRIPTOR TYPE CODE (05/26/07).
    pub const fn unsupported_target_descriptor_type() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x26, 0x07)
    }

    /// TOO MANY SEGMENT DESCRIPTORS (05/26/08).
    pub const fn too_many_segment_descriptors() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x26, 0x08)
    }

    /// UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE (05/26/09).
    pub const fn unsupported_segment_descriptor_type() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x26, 0x09)
    }

    // ---- COPY ABORTED (EXTENDED COPY) ----

    /// COPY ABORTED with ASC/ASCQ `asc`/`ascq`; INFORMATION = the index of the segment
    /// descriptor being processed.
    pub const fn copy_aborted(asc: u8, ascq: u8, segment: u64) -> Self {
        Sense::new(SenseKey::CopyAborted, asc, ascq).with_information(segment)
    }

    /// COPY TARGET DEVICE NOT REACHABLE (0A/0D/02): a segment names a copy target the copy
    /// manager cannot reach.
    pub const fn copy_target_not_reachable(segment: u64) -> Self {
        Sense::copy_aborted(0x0D, 0x02, segment)
    }

    /// UNREACHABLE COPY TARGET (0A/08/04): a segment names a CSCD descriptor the list lacks.
    pub const fn unreachable_copy_target(segment: u64) -> Self {
        Sense::copy_aborted(0x08, 0x04, segment)
    }

    /// LOGICAL BLOCK ADDRESS OUT OF RANGE (05/21/00).
    pub const fn lba_out_of_range() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x21, 0x00)
    }

    /// INVALID FIELD IN COMMAND INFORMATION UNIT (05/0E/03): the Data-Out the initiator sent is
    /// shorter than the command needs.
    pub const fn invalid_field_in_information_unit() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x0E, 0x03)
    }

    /// LOGICAL UNIT NOT SUPPORTED (05/25/00).
    pub const fn lun_not_supported() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x25, 0x00)
    }

    /// SAVING PARAMETERS NOT SUPPORTED (05/39/00): MODE SENSE with PC=saved values.
    pub const fn saving_parameters_not_supported() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x39, 0x00)
    }

    // ---- MISCOMPARE ----

    /// MISCOMPARE DURING VERIFY OPERATION (0E/1D/00); INFORMATION = byte offset of the first
    /// differing byte in the Data-Out.
    pub const fn miscompare(offset: u64) -> Self {
        Sense::new(SenseKey::Miscompare, 0x1D, 0x00).with_information(offset)
    }

    // ---- NOT READY ----

    /// LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS (02/04/1B), with how much of it is done
    /// (`done` of 65536).
    pub const fn sanitize_in_progress(done: u16) -> Self {
        Sense::new(SenseKey::NotReady, 0x04, 0x1B).with_progress(done)
    }

    // ---- MEDIUM ERROR ----

    /// SANITIZE COMMAND FAILED (03/31/03): the last SANITIZE failed and the medium is in the
    /// sanitize failure mode until a SANITIZE succeeds (or EXIT FAILURE MODE, when allowed).
    pub const fn sanitize_failed() -> Self {
        Sense::new(SenseKey::MediumError, 0x31, 0x03)
    }

    /// UNRECOVERED READ ERROR (03/11/00) for a read, WRITE ERROR (03/0C/00) for a write.
    pub const fn medium_error(read: bool) -> Self {
        if read {
            Sense::new(SenseKey::MediumError, 0x11, 0x00)
        } else {
            Sense::new(SenseKey::MediumError, 0x0C, 0x00)
        }
    }

    // ---- HARDWARE ERROR ----

    /// INTERNAL TARGET FAILURE (04/44/00): the target could not keep what the command changed
    /// (e.g. persistent reservations it must store before answering).
    pub const fn internal_target_failure() -> Self {
        Sense::new(SenseKey::HardwareError, 0x44, 0x00)
    }

    // ---- DATA PROTECT ----

    /// WRITE PROTECTED (07/27/00): a write to a read-only logical unit.
    pub const fn write_protected() -> Self {
        Sense::new(SenseKey::DataProtect, 0x27, 0x00)
    }

    /// SPACE ALLOCATION FAILED WRITE PROTECT (07/27/07): the thin pool is out of space.
    pub const fn space_allocation_failed_write_protect() -> Self {
        Sense::new(SenseKey::DataProtect, 0x27, 0x07)
    }

    // ---- UNIT ATTENTION ----

    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (06/29/00): a new I_T nexus.
    pub const fn power_on_reset() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x00)
    }

    /// BUS DEVICE RESET FUNCTION OCCURRED (06/29/03): after a LOGICAL UNIT RESET.
    pub const fn bus_device_reset() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x03)
    }

    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (06/29/00), reported after a TARGET RESET
    /// (warm or cold).
    pub const fn target_reset() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x00)
    }

    /// I_T NEXUS LOSS OCCURRED (06/29/07).
    pub const fn i_t_nexus_loss() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x07)
    }

    /// MODE PARAMETERS CHANGED (06/2A/01): another nexus changed a mode page.
    pub const fn mode_parameters_changed() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x01)
    }

    /// CAPACITY DATA HAS CHANGED (06/2A/09): the volume was resized.
    pub const fn capacity_data_changed() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x09)
    }

    /// INQUIRY DATA HAS CHANGED (06/3F/03): a VPD page changed (thin provisioning turned on or
    /// off).
    pub const fn inquiry_data_changed() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x3F, 0x03)
    }

    /// REPORTED LUNS DATA HAS CHANGED (06/3F/0E).
    pub const fn reported_luns_data_changed() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x3F, 0x0E)
    }

    /// COMMANDS CLEARED BY ANOTHER INITIATOR (06/2F/00): this nexus's commands were aborted by a
    /// task management function from another nexus (TAS=0).
    pub const fn commands_cleared_by_another_initiator() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x2F, 0x00)
    }

    /// THIN PROVISIONING SOFT THRESHOLD REACHED (06/38/07).
    pub const fn soft_threshold_reached() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x38, 0x07)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_match_sam5() {
        assert_eq!(Status::Good as u8, 0x00);
        assert_eq!(Status::CheckCondition as u8, 0x02);
        assert_eq!(Status::ConditionMet as u8, 0x04);
        assert_eq!(Status::Busy as u8, 0x08);
        assert_eq!(Status::ReservationConflict as u8, 0x18);
        assert_eq!(Status::TaskSetFull as u8, 0x28);
        assert_eq!(Status::TaskAborted.code(), 0x40);
    }

    #[test]
    fn fixed_sense_plain_layout() {
        let b = Sense::lba_out_of_range().to_bytes();
        assert_eq!(
            b,
            vec![
                0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn fixed_sense_field_pointer_with_bit() {
        // RDPROTECT in byte 1, bit 7: SKSV | C/D | BPV | bit 7 = 0xCF, field pointer 0x0001.
        let b = Sense::invalid_field_in_cdb(1, Some(7)).to_bytes();
        assert_eq!(b.len(), 18);
        assert_eq!(b[2], 0x05);
        assert_eq!((b[12], b[13]), (0x24, 0x00));
        assert_eq!(&b[15..18], &[0xCF, 0x00, 0x01]);
    }

    #[test]
    fn fixed_sense_field_pointer_without_bit() {
        let b = Sense::invalid_field_in_cdb(0x0102, None).to_bytes();
        assert_eq!(&b[15..18], &[0xC0, 0x01, 0x02]);
    }

    #[test]
    fn fixed_sense_parameter_list_pointer_has_cd_clear() {
        let b = Sense::invalid_field_in_parameter_list(14).to_bytes();
        assert_eq!((b[12], b[13]), (0x26, 0x00));
        assert_eq!(&b[15..18], &[0x80, 0x00, 14]);
        let b = Sense::invalid_field_in_parameter_list_bit(6, Some(2)).to_bytes();
        assert_eq!(&b[15..18], &[0x8A, 0x00, 6]);
    }

    #[test]
    fn fixed_sense_miscompare_information() {
        let b = Sense::miscompare(0x1234_5678).to_bytes();
        assert_eq!(b[0], 0xF0); // VALID | 70h
        assert_eq!(b[2], 0x0E);
        assert_eq!(&b[3..7], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!((b[12], b[13]), (0x1D, 0x00));
    }

    #[test]
    fn fixed_sense_information_too_big_clears_valid() {
        let b = Sense::miscompare(1 << 40).to_bytes();
        assert_eq!(b[0], 0x70);
        assert_eq!(&b[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_sense_layout() {
        let b = Sense::no_sense().to_descriptor_bytes();
        assert_eq!(b, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);

        let b = Sense::miscompare(0x10).to_descriptor_bytes();
        assert_eq!(b.len(), 20);
        assert_eq!(&b[..8], &[0x72, 0x0E, 0x1D, 0x00, 0, 0, 0, 12]);
        assert_eq!(&b[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(&b[12..20], &0x10u64.to_be_bytes());

        let b = Sense::invalid_field_in_cdb(2, Some(5)).to_descriptor_bytes();
        assert_eq!(b.len(), 16);
        assert_eq!(b[7], 8);
        assert_eq!(&b[8..16], &[0x02, 0x06, 0, 0, 0xCD, 0x00, 0x02, 0x00]);
    }

    #[test]
    fn named_constructors_codes() {
        let cases = [
            (
                Sense::invalid_opcode(),
                SenseKey::IllegalRequest,
                0x20,
                0x00,
            ),
            (
                Sense::parameter_list_length_error(),
                SenseKey::IllegalRequest,
                0x1A,
                0x00,
            ),
            (
                Sense::invalid_field_in_information_unit(),
                SenseKey::IllegalRequest,
                0x0E,
                0x03,
            ),
            (
                Sense::lun_not_supported(),
                SenseKey::IllegalRequest,
                0x25,
                0x00,
            ),
            (
                Sense::saving_parameters_not_supported(),
                SenseKey::IllegalRequest,
                0x39,
                0x00,
            ),
            (Sense::medium_error(true), SenseKey::MediumError, 0x11, 0x00),
            (
                Sense::medium_error(false),
                SenseKey::MediumError,
                0x0C,
                0x00,
            ),
            (Sense::write_protected(), SenseKey::DataProtect, 0x27, 0x00),
            (
                Sense::space_allocation_failed_write_protect(),
                SenseKey::DataProtect,
                0x27,
                0x07,
            ),
            (Sense::power_on_reset(), SenseKey::UnitAttention, 0x29, 0x00),
            (
                Sense::bus_device_reset(),
                SenseKey::UnitAttention,
                0x29,
                0x03,
            ),
            (Sense::target_reset(), SenseKey::UnitAttention, 0x29, 0x00),
            (Sense::i_t_nexus_loss(), SenseKey::UnitAttention, 0x29, 0x07),
            (
                Sense::mode_parameters_changed(),
                SenseKey::UnitAttention,
                0x2A,
                0x01,
            ),
            (
                Sense::capacity_data_changed(),
                SenseKey::UnitAttention,
                0x2A,
                0x09,
            ),
            (
                Sense::reported_luns_data_changed(),
                SenseKey::UnitAttention,
                0x3F,
                0x0E,
            ),
            (
                Sense::commands_cleared_by_another_initiator(),
                SenseKey::UnitAttention,
                0x2F,
                0x00,
            ),
            (
                Sense::soft_threshold_reached(),
                SenseKey::UnitAttention,
                0x38,
                0x07,
            ),
        ];
        for (sense, key, asc, ascq) in cases {
            assert_eq!((sense.key, sense.asc, sense.ascq), (key, asc, ascq));
            let b = sense.to_bytes();
            assert_eq!((b[2], b[12], b[13]), (key.code(), asc, ascq));
        }
        assert!(Sense::power_on_reset().is_unit_attention());
        assert!(!Sense::write_protected().is_unit_attention());
    }

    #[test]
    fn sanitize_in_progress_carries_its_progress_in_both_formats() {
        let s = Sense::sanitize_in_progress(0x4000);
        let fixed = s.to_bytes();
        assert_eq!((fixed[2], fixed[12], fixed[13]), (0x02, 0x04, 0x1B));
        assert_eq!(
            &fixed[15..18],
            &[0x80, 0x40, 0x00],
            "SKSV + PROGRESS INDICATION"
        );
        let desc = s.to_descriptor_bytes();
        assert_eq!(&desc[8..15], &[0x02, 0x06, 0x00, 0x00, 0x80, 0x40, 0x00]);
        assert_eq!(desc[7] as usize, desc.len() - 8);
        let failed = Sense::sanitize_failed().to_bytes();
        assert_eq!(
            (failed[2], failed[12], failed[13], failed[15]),
            (0x03, 0x31, 0x03, 0)
        );
    }
}
