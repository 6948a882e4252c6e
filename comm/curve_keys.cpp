#include "comm/curve_keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "comm/frame.h"  // zmq.h: zmq_curve_keypair, zmq_z85_decode

namespace zr {

namespace fs = std::filesystem;

namespace {

constexpr size_t kZ85KeyChars = 40;

std::string timestamp() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

// The zcert layout (czmq zcert_save_public / zcert_save_secret): a comment header, an empty
// metadata section, and a curve section with the quoted Z85 keys.
std::string cert_text(const CurveKeyPair& keys, bool secret) {
  std::ostringstream out;
  out << "#   ****  Generated on " << timestamp() << " by zrollout keygen  ****\n";
  if (secret) {
    out << "#   ZeroMQ CURVE **Secret** Certificate\n"
           "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n";
  } else {
    out << "#   ZeroMQ CURVE Public Certificate\n"
           "#   Exchange securely, or use a secure mechanism to verify the contents\n"
           "#   of this file after exchange.\n\n";
  }
  out << "metadata\ncurve\n    public-key = \"" << keys.public_key << "\"\n";
  if (secret) out << "    secret-key = \"" << keys.secret_key << "\"\n";
  return out.str();
}

Status write_file(const std::string& path, const std::string& text, mode_t mode) {
  // Create with the final mode so a secret is never readable by others, even for a moment.
  std::error_code ec;
  fs::remove(path, ec);
  FILE* f = nullptr;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd >= 0) f = ::fdopen(fd, "w");
  if (!f) {
    if (fd >= 0) ::close(fd);
    return make_error(ErrorCode::io_error, "out: cannot create " + path);
  }
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !ok) return make_error(ErrorCode::io_error, "out: cannot write " + path);
  ::chmod(path.c_str(), mode);  // the umask may have taken bits off a public file
  return {};
}

// The quoted value of `name = "..."` in a zcert file (ZPL: indentation marks the section; the
// curve section's keys are unique names, so a flat scan is enough).
std::optional<std::string> zpl_value(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    if (line.compare(start, name.size(), name) != 0) continue;
    size_t eq = line.find('=', start + name.size());
    if (eq == std::string::npos || line.find_first_not_of(" \t", start + name.size()) != eq) continue;
    size_t q1 = line.find('"', eq);
    size_t q2 = q1 == std::string::npos ? q1 : line.find('"', q1 + 1);
    if (q2 != std::string::npos) return line.substr(q1 + 1, q2 - q1 - 1);
    size_t v = line.find_first_not_of(" \t", eq + 1);  // ZPL allows an unquoted value
    return v == std::string::npos ? std::string() : line.substr(v, line.find_last_not_of(" \t\r") + 1 - v);
  }
  return std::nullopt;
}

}  // namespace

bool valid_z85_key(std::string_view z85) {
  if (z85.size() != kZ85KeyChars) return false;
  std::array<uint8_t, 32> bin{};
  std::string s(z85);
  return zmq_z85_decode(bin.data(), s.c_str()) != nullptr;
}

Result<CurveKeyPair> make_curve_keypair() {
  std::array<char, kZ85KeyChars + 1> pub{}, sec{};
  if (zmq_curve_keypair(pub.data(), sec.data()) != 0)
    return make_error(ErrorCode::unsupported, "curve: this libzmq was built without CURVE (libsodium)");
  return CurveKeyPair{pub.data(), sec.data()};
}

Status write_curve_cert(const std::string& base, const CurveKeyPair& keys) {
  if (!valid_z85_key(keys.public_key) || !valid_z85_key(keys.secret_key))
    return make_error(ErrorCode::invalid_argument, "keys: not a 40-character Z85 CURVE keypair");
  fs::path dir = fs::path(base).parent_path();
  std::error_code ec;
  if (!dir.empty()) fs::create_directories(dir, ec);
  ZR_RETURN_IF_ERROR(write_file(base + ".key", cert_text(keys, false), 0644));
  return write_file(base + ".key_secret", cert_text(keys, true), 0600);
}

Status write_curve_public_cert(const std::string& base, const std::string& public_key) {
  if (!valid_z85_key(public_key)) return make_error(ErrorCode::invalid_argument, "keys: not a 40-character Z85 key");
  fs::path dir = fs::path(base).parent_path();
  std::error_code ec;
  if (!dir.empty()) fs::create_directories(dir, ec);
  return write_file(base + ".key", cert_text({public_key, ""}, false), 0644);
}

Result<CurveKeyPair> read_curve_cert(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(ErrorCode::not_found, path + ": cannot open the key file");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  CurveKeyPair keys;
  auto pub = zpl_value(text, "public-key");
  if (!pub || !valid_z85_key(*pub))
    return make_error(ErrorCode::invalid_argument, path + ": public-key: missing or not 40 Z85 characters");
  keys.public_key = *pub;
  if (auto sec = zpl_value(text, "secret-key")) {
    if (!valid_z85_key(*sec))
      return make_error(ErrorCode::invalid_argument, path + ": secret-key: not 40 Z85 characters");
    keys.secret_key = *sec;
  }
  return keys;
}

Result<std::vector<std::string>> read_curve_key_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return make_error(ErrorCode::not_found, dir + ": not a folder of .key files");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file() && e.path().extension() == ".key") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<std::string> keys;
  for (const auto& f : files) {
    auto k = read_curve_cert(f.string());
    if (!k.ok()) return k.status();
    keys.push_back(k->public_key);
  }
  return keys;
}

const char* role_name(Role r) {
  switch (r) {
    case Role::client:
      return "client";
    case Role::trainer:
      return "trainer";
    case Role::none:
      break;
  }
  return "none";
}

Role role_from_user_id(std::string_view id) {
  if (id == "trainer") return Role::trainer;
  if (id == "client") return Role::client;
  return Role::none;
}

Role required_role(std::string_view op) {
  // One table: the ops a client key may call (docs/protocol.md §1). Everything else needs a
  // trainer key, so an op added later is protected until it is listed here.
  static constexpr std::string_view kClientOps[] = {
      "generate",
      "score",
      "abort",
      "get_load",
      "health",
      "get_model_info",
      "open_session",
      "close_session",
      "get_weight_version",
      "get_weights_checksum",
      "get_engines",
      "tokenize",
      "detokenize",
      "ping",
      "pong",
  };
  for (std::string_view c : kClientOps)
    if (op == c) return Role::client;
  return Role::trainer;
}

Status authorize_op(std::string_view op, std::string_view user_id) {
  if (user_id.empty()) return {};  // not a CURVE connection: no roles (see the header)
  const Role have = role_from_user_id(user_id);
  const Role need = required_role(op);
  if (have == Role::trainer || (have == Role::client && need == Role::client)) return {};
  return make_error(ErrorCode::permission_denied, "op '" + std::string(op) + "' needs a " + role_name(need) +
                                                      " key; this connection's key has role '" + std::string(user_id) +
                                                      "'");
}

void set_curve_server(zmq::socket_t& s, const CurveKeyPair& server, const std::string& zap_domain) {
  s.set(zmq::sockopt::curve_server, true);
  s.set(zmq::sockopt::curve_secretkey, server.secret_key);
  s.set(zmq::sockopt::zap_domain, zap_domain);
}

void set_curve_client(zmq::socket_t& s, const CurveClientKeys& keys) {
  s.set(zmq::sockopt::curve_serverkey, keys.server_key);
  s.set(zmq::sockopt::curve_publickey, keys.own.public_key);
  s.set(zmq::sockopt::curve_secretkey, keys.own.secret_key);
}

Result<CurveClientKeys> load_curve_client_keys(const std::string& server_key_file, const std::string& key_file) {
  if (server_key_file.empty() != key_file.empty())
    return make_error(ErrorCode::invalid_argument, server_key_file.empty() ? "curve-server: needed with --curve-key"
                                                                           : "curve-key: needed with --curve-server");
  CurveClientKeys out;
  if (server_key_file.empty()) return out;
  auto server = read_curve_cert(server_key_file);
  if (!server.ok()) return make_error(server.status().code, "curve-server: " + server.status().message);
  auto own = read_curve_cert(key_file);
  if (!own.ok()) return make_error(own.status().code, "curve-key: " + own.status().message);
  if (own->secret_key.empty())
    return make_error(ErrorCode::invalid_argument,
                      "curve-key: " + key_file + " has no secret-key (give the .key_secret file)");
  out.server_key = server->public_key;
  out.own = *own;
  return out;
}

Result<CurveServerKeys> load_curve_server_keys(const std::string& secret_file, const std::string& trainer_dir,
                                               const std::string& client_dir) {
  CurveServerKeys out;
  auto server = read_curve_cert(secret_file);
  if (!server.ok()) return make_error(server.status().code, "curve-secret: " + server.status().message);
  if (server->secret_key.empty())
    return make_error(ErrorCode::invalid_argument,
                      "curve-secret: " + secret_file + " has no secret-key (give the .key_secret file)");
  out.server = *server;
  if (trainer_dir.empty() && client_dir.empty())
    return make_error(ErrorCode::invalid_argument,
                      "trainer-keys: give --trainer-keys and/or --client-keys with --curve-secret");
  if (!trainer_dir.empty()) {
    auto k = read_curve_key_dir(trainer_dir);
    if (!k.ok()) return make_error(k.status().code, "trainer-keys: " + k.status().message);
    out.trainer_keys = *k;
  }
  if (!client_dir.empty()) {
    auto k = read_curve_key_dir(client_dir);
    if (!k.ok()) return make_error(k.status().code, "client-keys: " + k.status().message);
    out.client_keys = *k;
  }
  return out;
}

}  // namespace zr
