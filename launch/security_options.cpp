#include "launch/security_options.h"

#include <spdlog/spdlog.h>

#include "actors/engine/request_validation.h"

#include <tuple>

namespace zr::cli {

void add_server_security_options(CLI::App* cmd, ServerSecurityCli& o) {
  cmd->add_option("--curve-secret", o.curve_secret,
                  "this server's CURVE key (NAME.key_secret from `zrollout keygen`): only listed keys may connect");
  cmd->add_option("--trainer-keys", o.trainer_keys,
                  "folder of .key files allowed every op (weights, memory, flush_cache, shutdown)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--client-keys", o.client_keys,
                  "folder of .key files allowed generate, score, abort, sessions and the read ops")
      ->check(CLI::ExistingDirectory);
  cmd->add_flag("--insecure", o.insecure,
                "serve a non-loopback tcp:// address without CURVE keys (anyone who reaches it may push weights)");
  cmd->add_option("--max-message-mib", o.max_message_mib,
                  "largest message part accepted (ZMQ_MAXMSGSIZE); a larger one drops the connection")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

void add_call_limit_options(CLI::App* cmd, CallLimits& limits) {
  cmd->add_option("--max-prompts-per-call", limits.max_prompts_per_call, "requests in one generate / score call")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-n", limits.max_n, "largest sampling_params.n")
      ->capture_default_str()
      ->check(CLI::Range(1, kMaxSamplesPerRequest));
  cmd->add_option("--max-in-flight", limits.max_in_flight,
                  "requests one connection may have in flight (trainer keys are not counted)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

void add_client_security_options(CLI::App* cmd, ClientSecurityCli& o) {
  cmd->add_option("--curve-server", o.curve_server, "the server's CURVE public key (its NAME.key)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--curve-key", o.curve_key, "this side's CURVE key (NAME.key_secret from `zrollout keygen`)")
      ->check(CLI::ExistingFile);
}

Status check_protected_mode(const std::string& bind, bool has_keys, bool insecure) {
  if (has_keys || insecure || local_only_endpoint(bind)) return {};
  return make_error(ErrorCode::invalid_argument,
                    "bind: " + bind +
                        " is reachable from other hosts and no CURVE keys are set; give --curve-secret "
                        "with --trainer-keys / --client-keys (see `zrollout keygen`), or --insecure to serve it open "
                        "anyway");
}

namespace {

// The allow-list folders, added to `keys` (either may be unset).
Status add_key_dirs(const ServerSecurityCli& o, CurveServerKeys& keys) {
  for (auto [dir, into, flag] : {std::tuple{&o.trainer_keys, &keys.trainer_keys, "trainer-keys: "},
                                 std::tuple{&o.client_keys, &keys.client_keys, "client-keys: "}}) {
    if (dir->empty()) continue;
    auto k = read_curve_key_dir(*dir);
    if (!k.ok()) return make_error(k.status().code, flag + k.status().message);
    into->insert(into->end(), k->begin(), k->end());
  }
  return {};
}

}  // namespace

Status configure_server(const ServerSecurityCli& o, const std::string& bind, ActorOptions& actor,
                        const std::optional<CurveServerKeys>& mpi_keys) {
  actor.max_message_bytes = static_cast<int64_t>(o.max_message_mib) << 20;
  if (mpi_keys) {  // under mpirun the job's keys serve; the folders add keys from outside the job
    if (!o.curve_secret.empty()) spdlog::warn("--curve-secret: under mpirun this rank serves with the job's keys");
    CurveServerKeys keys = *mpi_keys;
    ZR_RETURN_IF_ERROR(add_key_dirs(o, keys));
    actor.curve = std::move(keys);
  } else if (!o.curve_secret.empty()) {
    auto keys = load_curve_server_keys(o.curve_secret, o.trainer_keys, o.client_keys);
    if (!keys.ok()) return keys.status();
    actor.curve = std::move(keys).value();
  } else if (!o.trainer_keys.empty() || !o.client_keys.empty()) {
    return make_error(ErrorCode::invalid_argument, "curve-secret: needed with --trainer-keys / --client-keys");
  }
  ZR_RETURN_IF_ERROR(check_protected_mode(bind, actor.curve.has_value(), o.insecure));
  if (actor.curve)
    spdlog::info("CURVE on: {} trainer key(s), {} client key(s); other keys get no answer",
                 actor.curve->trainer_keys.size(), actor.curve->client_keys.size());
  else if (!local_only_endpoint(bind))
    spdlog::warn("--insecure: {} serves without CURVE keys; anyone who reaches it may push weights or shut it down",
                 bind);
  return {};
}

}  // namespace zr::cli
