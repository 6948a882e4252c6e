// `zrollout keygen --out DIR/NAME`: a fresh CURVE keypair as DIR/NAME.key (public) and
// DIR/NAME.key_secret (public and secret, mode 0600), in czmq's zcert format.
#include <cstdio>

#include "comm/curve_keys.h"
#include "launch/commands.h"

namespace zr::cli {

void add_keygen(CLI::App& app) {
  auto out = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("keygen", "make a CURVE keypair (NAME.key and NAME.key_secret, zcert format)");
  cmd->add_option("--out", *out, "DIR/NAME: writes DIR/NAME.key and DIR/NAME.key_secret (0600)")->required();
  cmd->callback([out] {
    auto keys = make_curve_keypair();
    Status st = keys.ok() ? write_curve_cert(*out, *keys) : keys.status();
    if (!st.ok()) {
      std::fprintf(stderr, "keygen: %s\n", st.to_string().c_str());
      throw CLI::RuntimeError(1);
    }
    std::printf("%s.key\n%s.key_secret\npublic-key %s\n", out->c_str(), out->c_str(), keys->public_key.c_str());
  });
}

}  // namespace zr::cli
