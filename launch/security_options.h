// The security and limit options of the server commands (serve, router) and of the commands that
// connect to one (client, trainer): declared once here, they drive parsing, --help and start-up.
//
// Protected mode (as Redis does it): a server bound to a non-loopback tcp:// address without CURVE
// keys refuses to start, naming --curve-secret and --insecure; --insecure starts it anyway with a
// warning. inproc://, ipc:// and loopback tcp:// stay open without keys.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

#include "comm/call_limits.h"
#include "comm/curve_keys.h"
#include "launch/cluster.h"
#include "runtime/actor.h"

namespace zr::cli {

constexpr int kDefaultMaxMessageMib = 64;

struct ServerSecurityCli {
  std::string curve_secret, trainer_keys, client_keys;
  bool insecure = false;
  int max_message_mib = kDefaultMaxMessageMib;
};

void add_server_security_options(CLI::App* cmd, ServerSecurityCli& o);

// Protected mode: ok, or invalid_argument naming --curve-secret and --insecure.
Status check_protected_mode(const std::string& bind, bool has_keys, bool insecure);

// Reads the keys (if --curve-secret is given), applies protected mode, and fills the ROUTER's
// security and limit settings in `actor`. `mpi_keys`: keys handed out by the trainer rank under
// mpirun (used when no --curve-secret is given).
Status configure_server(const ServerSecurityCli& o, const std::string& bind, ActorOptions& actor,
                        const std::optional<CurveServerKeys>& mpi_keys = std::nullopt);

// --max-prompts-per-call, --max-n and --max-in-flight (serve, router), into `limits`.
void add_call_limit_options(CLI::App* cmd, CallLimits& limits);

struct ClientSecurityCli {
  std::string curve_server, curve_key;
};

void add_client_security_options(CLI::App* cmd, ClientSecurityCli& o);
inline Result<CurveClientKeys> load(const ClientSecurityCli& o) {
  return load_curve_client_keys(o.curve_server, o.curve_key);
}

}  // namespace zr::cli
