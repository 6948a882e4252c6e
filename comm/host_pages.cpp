#include "comm/host_pages.h"

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace zr {

std::string thp_setting(const char* file) {
  std::ifstream in(std::string("/sys/kernel/mm/transparent_hugepage/") + file);
  std::string line;
  if (!std::getline(in, line)) return "unknown";
  const auto a = line.find('['), b = line.find(']');
  return a != std::string::npos && b != std::string::npos && b > a ? line.substr(a + 1, b - a - 1) : line;
}

bool shmem_thp_available() {
  const std::string s = thp_setting("shmem_enabled");
  return s == "always" || s == "within_size" || s == "advise" || s == "force";
}

bool anon_thp_available() {
  const std::string s = thp_setting("enabled");
  return s == "always" || s == "madvise";
}

bool huge_pages_wanted() { return std::getenv("ZR_NO_HUGEPAGES") == nullptr; }

std::string MappingPages::describe() const {
  if (!found) return "unknown";
  if (kernel_page_kib >= 2048) return std::to_string(kernel_page_kib / 1024) + " MiB pages (hugetlb)";
  if (huge_kib == 0) return std::to_string(kernel_page_kib) + " KiB pages";
  const int pct =
      size_kib ? static_cast<int>(100.0 * static_cast<double>(huge_kib) / static_cast<double>(size_kib) + 0.5) : 0;
  if (pct >= 99) return "2 MiB pages (" + std::to_string(pct) + "%)";
  return std::to_string(kernel_page_kib) + " KiB pages (" + std::to_string(pct) + "% in 2 MiB)";
}

MappingPages mapping_pages(const void* addr) {
  MappingPages out;
  std::ifstream in("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(addr);
  std::string line;
  bool inside = false;
  while (std::getline(in, line)) {
    unsigned long lo = 0, hi = 0;
    // A VMA header: "lo-hi perms offset dev inode [path]"; field lines start with a capital.
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) &&
        !std::isupper(static_cast<unsigned char>(line[0])) && std::sscanf(line.c_str(), "%lx-%lx", &lo, &hi) == 2) {
      if (inside) break;
      inside = at >= lo && at < hi;
      if (inside) out.found = true;
      continue;
    }
    if (!inside) continue;
    size_t kib = 0;
    char key[64] = {};
    if (std::sscanf(line.c_str(), "%63[^:]: %zu kB", key, &kib) != 2) continue;
    const std::string k = key;
    if (k == "Size") out.size_kib = kib;
    else if (k == "KernelPageSize") out.kernel_page_kib = kib;
    else if (k == "AnonHugePages" || k == "ShmemPmdMapped" || k == "FilePmdMapped") out.huge_kib += kib;
  }
  return out;
}

std::string thp_line() {
  return "THP anon=[" + thp_setting("enabled") + "] shmem=[" + thp_setting("shmem_enabled") + "]";
}

}  // namespace zr
