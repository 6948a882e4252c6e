// What pages this host really gives weight transfers: the transparent-huge-page settings and, for
// a mapping, how much of it /proc/self/smaps shows backed by huge pages. Weight-sync speed on a
// host depends on both (README, weight sync): with shmem THP `never`, a shared-memory segment is
// mapped in 4 KiB pages and every fresh mapping of it costs ~1.5 us per page.
// Thread-safety: all functions are pure reads of /sys and /proc.
#pragma once

#include <cstddef>
#include <string>

namespace zr {

// The selected value of /sys/kernel/mm/transparent_hugepage/<file> ("enabled" for anonymous
// memory, "shmem_enabled" for shared memory), e.g. "madvise", "never"; "unknown" if unreadable.
std::string thp_setting(const char* file);

// Whether MADV_HUGEPAGE on a POSIX shm segment gets huge pages on this host (shmem_enabled is
// always, within_size, advise or force).
bool shmem_thp_available();

// Whether anonymous memory advised MADV_HUGEPAGE gets huge pages (enabled is always or madvise).
bool anon_thp_available();

// False when ZR_NO_HUGEPAGES is set: weight buffers and segments then stay in 4 KiB pages (a
// forced small-page run, for tests and for measuring a host without huge pages).
bool huge_pages_wanted();

// How the mapping that contains addr is backed, from /proc/self/smaps.
struct MappingPages {
  size_t size_kib = 0;         // of the whole mapping (VMA)
  size_t huge_kib = 0;         // AnonHugePages + ShmemPmdMapped + FilePmdMapped
  size_t kernel_page_kib = 0;  // KernelPageSize (2048 for hugetlb)
  bool found = false;
  // "2 MiB pages (100%)", "4 KiB pages", "4 KiB pages (37% in 2 MiB)", "unknown".
  std::string describe() const;
};
MappingPages mapping_pages(const void* addr);

// One line for benchmark headers: "THP anon=[madvise] shmem=[never]".
std::string thp_line();

}  // namespace zr
