#include "launch/cluster.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <cstdlib>
#include <sstream>

namespace zr::cli {

bool under_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE"); }

namespace {

std::string first_ipv4() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "127.0.0.1";
  std::string ip = "127.0.0.1";
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, buf, sizeof buf);
    if (std::string(buf).rfind("127.", 0) != 0) {
      ip = buf;
      break;
    }
  }
  freeifaddrs(list);
  return ip;
}

}  // namespace

std::string advertised_endpoint(const std::string& bound, const std::string& advertise_host) {
  const std::string tcp = "tcp://";
  if (bound.rfind(tcp, 0) != 0) return bound;  // ipc:// and inproc:// are host-local anyway
  size_t colon = bound.rfind(':');
  std::string host = bound.substr(tcp.size(), colon - tcp.size());
  if (host != "0.0.0.0" && host != "*") return bound;
  return tcp + (advertise_host.empty() ? first_ipv4() : advertise_host) + bound.substr(colon);
}

Result<ClusterRoles> exchange_roles(MpiGroup& world, const std::string& role, const std::string& endpoint) {
  auto all = world.allgather_strings(role + " " + endpoint);
  if (!all.ok()) return all.status();
  ClusterRoles roles;
  for (int r = 0; r < static_cast<int>(all->size()); ++r) {
    std::istringstream in((*all)[r]);
    std::string what, ep;
    in >> what >> ep;
    if (what == "trainer") roles.trainer_rank = r;
    else if (what == "serve") {
      roles.engine_endpoints.push_back(ep);
      roles.engine_ranks.push_back(r);
    }
  }
  return roles;
}

}  // namespace zr::cli
