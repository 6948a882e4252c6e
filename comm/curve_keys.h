// CURVE keys (libzmq's CurveZMQ; Debian's libzmq is built with libsodium) and the two roles a key
// can hold on a zrollout server.
//
// Key files use czmq's `zcert` text format, so the ZeroMQ ecosystem's tools read them:
//   NAME.key         metadata + `curve` section with `public-key = "<40 Z85 chars>"`
//   NAME.key_secret  the same plus `secret-key = "<40 Z85 chars>"`, mode 0600
// A folder of `.key` files is an allow-list (zauth's CURVE allow-list): `--trainer-keys DIR`,
// `--client-keys DIR`.
//
// Roles: a connection authenticated by a key in the client folder gets role "client", one in the
// trainer folder "trainer" (both: trainer). The server's ZAP handler (runtime/zap_handler.h) sets
// the role as the ZAP user id; libzmq then attaches it to every message of that connection as the
// "User-Id" property, which the actor checks against required_role(op) before any handler runs.
// Connections without CURVE (inproc://, or a server started without keys) have no role and may
// call every op, as before keys existed.
//
// Pure functions and plain data; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "comm/status.h"

namespace zmq {
class socket_t;
}

namespace zr {

// A keypair in Z85 text (40 characters each). secret_key is empty for a public-only certificate.
struct CurveKeyPair {
  std::string public_key;
  std::string secret_key;
};

// A fresh keypair from libzmq (zmq_curve_keypair). Errors: unsupported (libzmq without CURVE).
Result<CurveKeyPair> make_curve_keypair();

// Writes BASE.key (public, mode 0644) and BASE.key_secret (public and secret, mode 0600).
Status write_curve_cert(const std::string& base, const CurveKeyPair& keys);
// Writes BASE.key only (mode 0644): a public key handed to others, e.g. a server's.
Status write_curve_public_cert(const std::string& base, const std::string& public_key);
// Reads a zcert file: a .key gives the public key, a .key_secret both. Errors name the file and
// the missing or malformed field.
Result<CurveKeyPair> read_curve_cert(const std::string& path);
// The public keys of every *.key file in `dir` (sorted by file name). Errors: not a folder, a file
// that does not parse. An empty folder is allowed (nobody of that role may connect).
Result<std::vector<std::string>> read_curve_key_dir(const std::string& dir);
// True when `z85` is 40 Z85 characters that decode to a 32-byte key.
bool valid_z85_key(std::string_view z85);

// Who may call what. `none` is no authenticated role (a message without a User-Id).
enum class Role { none, client, trainer };
const char* role_name(Role r);                // "none", "client", "trainer"
Role role_from_user_id(std::string_view id);  // "client" / "trainer"; anything else: none

// The role an op needs. Client ops: generate, score, abort, sessions and the read ops; everything
// else (weight ops, release/resume_memory, flush_cache, shutdown and any op not listed) needs a
// trainer key.
Role required_role(std::string_view op);
// ok, or permission_denied naming the op and the role, for a message with ZAP user id `user_id`
// ("" when the connection is not authenticated: every op is allowed, see above).
Status authorize_op(std::string_view op, std::string_view user_id);

// The socket-side settings. A server socket with `server` set speaks CURVE as the server and sends
// every handshake to the context's ZAP handler under `zap_domain`.
struct CurveServerKeys {
  CurveKeyPair server;                    // the server's own keypair (from --curve-secret)
  std::vector<std::string> trainer_keys;  // Z85 public keys (from --trainer-keys DIR)
  std::vector<std::string> client_keys;   // Z85 public keys (from --client-keys DIR)
};
// What a connecting socket needs: the server's public key and its own keypair.
struct CurveClientKeys {
  std::string server_key;  // Z85 public key of the server (its .key file)
  CurveKeyPair own;        // this side's keypair (its .key_secret file)
  bool enabled() const { return !server_key.empty(); }
};

// Socket settings, before bind / connect. A server socket speaks CURVE as the server with this
// keypair and sends every handshake to the context's ZAP handler under `zap_domain`.
void set_curve_server(zmq::socket_t& s, const CurveKeyPair& server, const std::string& zap_domain);
void set_curve_client(zmq::socket_t& s, const CurveClientKeys& keys);

// Reads --curve-server FILE and --curve-key FILE (both or neither: "" and "" give disabled keys).
Result<CurveClientKeys> load_curve_client_keys(const std::string& server_key_file, const std::string& key_file);
// Reads --curve-secret FILE, --trainer-keys DIR, --client-keys DIR. At least one folder is needed.
Result<CurveServerKeys> load_curve_server_keys(const std::string& secret_file, const std::string& trainer_dir,
                                               const std::string& client_dir);

}  // namespace zr
