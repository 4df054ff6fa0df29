#pragma once
/// \file
/// The parts of the zip format that `torch.save` files use (PKWARE APPNOTE 6.3): stored
/// (uncompressed) records, a central directory, zip64 end records and extra fields. Pure
/// functions over bytes, each treating its input as hostile: every count and offset is checked
/// against the file's size before anything is allocated, record names must be unique, and the
/// records may not overlap the central directory or each other's headers. Reading goes in three
/// steps because a file's parts are far apart: its tail (`locate_central_directory`), then the
/// central directory (`decode_central_directory`), then each record's local header
/// (`local_data_offset`), whose length is only known there.
///
/// Writing (`zip_writer`) produces what torch.save writes: stored records, data aligned to 64
/// bytes through padding in the local header's extra field, and zip64 end records.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "meshckpt/error.hpp"

namespace meshckpt::format::zip {

/// The most bytes of a file's tail that `locate_central_directory` needs: the end record, its
/// largest comment, and the zip64 locator before it.
inline constexpr std::uint64_t max_tail_bytes = 22 + 65535 + 20;

/// Where the central directory is.
struct directory_location {
  std::uint64_t offset = 0;   ///< first byte in the file
  std::uint64_t size = 0;     ///< bytes
  std::uint64_t entries = 0;  ///< records it lists
  /// Set when the end record is a zip64 one: its offset, whose 56 bytes must be read and
  /// passed to `apply_zip64_end` before the location is complete.
  std::optional<std::uint64_t> zip64_end_offset;
};

/// Finds the end-of-central-directory record in `tail`, the last bytes of a file of
/// `file_size` bytes (at most `max_tail_bytes`; all of a smaller file). Errors:
/// `corrupt_manifest` naming what is wrong (no end record: not a zip file).
result<directory_location> locate_central_directory(std::span<const std::byte> tail, std::uint64_t file_size);

/// Completes `loc` from the 56-byte zip64 end record read at `*loc.zip64_end_offset`.
result<void> apply_zip64_end(directory_location& loc, std::span<const std::byte> record, std::uint64_t file_size);

/// One record of the central directory.
struct entry {
  std::string name;
  std::uint16_t method = 0;  ///< 0: stored; anything else is compressed
  std::uint16_t flags = 0;
  std::uint32_t crc32 = 0;  ///< CRC-32 (ISO 3309, as zlib's crc32) of the uncompressed bytes
  std::uint64_t compressed_size = 0;
  std::uint64_t size = 0;           ///< uncompressed size
  std::uint64_t header_offset = 0;  ///< the local header's first byte
};

/// The most records a central directory may list.
inline constexpr std::uint64_t max_entries = std::uint64_t{1} << 24;

/// Decodes the central directory `bytes` (read at `loc`): `loc.entries` records, each in the
/// file. Errors: `corrupt_manifest` (a bad signature, a record past the end, a name twice, an
/// encrypted record, a local header past the directory), `limit_exceeded`.
result<std::vector<entry>> decode_central_directory(std::span<const std::byte> bytes, const directory_location& loc,
                                                    std::uint64_t file_size);

/// The bytes of a local header to read to find `e`'s data: 30, plus up to 64 KiB of name and
/// extra fields (fewer at the end of a small file).
inline constexpr std::uint64_t local_header_read = 30 + 65535 + 65535;

/// The offset of `e`'s data, given `header`, the bytes at `e.header_offset` (at least 30, and
/// then the name and extra field lengths it gives). The local name must equal the central one;
/// the data must lie before `data_limit` (the central directory's offset). Errors:
/// `corrupt_manifest`, naming the record.
result<std::uint64_t> local_data_offset(const entry& e, std::span<const std::byte> header, std::uint64_t data_limit);

/// Writes a zip file as torch.save does, one record after the other; the caller writes the
/// bytes each call returns, in order.
class zip_writer {
 public:
  /// The local header of a record `name` of `size` bytes with CRC-32 `crc`, padded so that its
  /// data starts at a multiple of `align` bytes of the file. With `crc_after`, the CRC is not
  /// known yet (`crc` is ignored): `end_record` gives it, in a data descriptor after the data,
  /// as torch.save writes its records.
  std::vector<std::byte> begin_record(std::string_view name, std::uint64_t size, std::uint32_t crc, std::uint64_t align = 64,
                                      bool crc_after = false);
  /// Ends the record begun last, whose `size` bytes were written; returns its data descriptor
  /// (holding `crc`) when it was begun with `crc_after`, else nothing.
  std::vector<std::byte> end_record(std::uint32_t crc = 0);
  /// The central directory and the (zip64) end records, written last.
  std::vector<std::byte> finish();
  /// Bytes written so far.
  std::uint64_t offset() const { return at_; }

 private:
  std::vector<entry> entries_;
  std::uint64_t at_ = 0;
  bool open_ = false;
};

/// The CRC-32 of `data` appended to bytes whose CRC-32 is `crc` (0 for none), as zlib's crc32.
std::uint32_t crc32_extend(std::uint32_t crc, std::span<const std::byte> data) noexcept;

}  // namespace meshckpt::format::zip
