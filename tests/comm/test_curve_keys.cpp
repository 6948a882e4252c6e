// CURVE key files (czmq zcert format) and the op -> role table.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "comm/curve_keys.h"

namespace zr {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("zr_curve_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(CurveKeys, KeypairsAreFreshValidZ85) {
  auto a = make_curve_keypair();
  auto b = make_curve_keypair();
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(valid_z85_key(a->public_key));
  EXPECT_TRUE(valid_z85_key(a->secret_key));
  EXPECT_NE(a->public_key, b->public_key);
  EXPECT_FALSE(valid_z85_key("short"));
  EXPECT_FALSE(valid_z85_key(std::string(40, '"')));  // not in the Z85 alphabet
}

TEST(CurveKeys, CertRoundTripAndModes) {
  fs::path d = temp_dir("roundtrip");
  auto keys = make_curve_keypair();
  ASSERT_TRUE(keys.ok());
  ASSERT_TRUE(write_curve_cert((d / "sub" / "engine").string(), *keys).ok());
  struct stat st {};
  ASSERT_EQ(::stat((d / "sub" / "engine.key_secret").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((d / "sub" / "engine.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0077, 0044u);  // readable by others: it is the public half

  auto pub = read_curve_cert((d / "sub" / "engine.key").string());
  ASSERT_TRUE(pub.ok()) << pub.status().to_string();
  EXPECT_EQ(pub->public_key, keys->public_key);
  EXPECT_TRUE(pub->secret_key.empty());  // the public file has no secret
  auto sec = read_curve_cert((d / "sub" / "engine.key_secret").string());
  ASSERT_TRUE(sec.ok());
  EXPECT_EQ(sec->public_key, keys->public_key);
  EXPECT_EQ(sec->secret_key, keys->secret_key);
  fs::remove_all(d);
}

// A certificate written by czmq's zcert_save (its layout, keys from the CurveZMQ test vectors).
TEST(CurveKeys, ReadsCzmqCertificates) {
  fs::path d = temp_dir("czmq");
  std::ofstream(d / "peer.key_secret") << "#   ****  Generated on 2024-01-01 00:00:00 by CZMQ  ****\n"
                                          "#   ZeroMQ CURVE **Secret** Certificate\n\n"
                                          "metadata\n    name = \"peer\"\ncurve\n"
                                          "    public-key = \"Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID\"\n"
                                          "    secret-key = \"D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs\"\n";
  auto c = read_curve_cert((d / "peer.key_secret").string());
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->public_key, "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID");
  EXPECT_EQ(c->secret_key, "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs");
  fs::remove_all(d);
}

TEST(CurveKeys, BadFilesNameTheField) {
  fs::path d = temp_dir("bad");
  std::ofstream(d / "x.key") << "curve\n    public-key = \"tooshort\"\n";
  auto c = read_curve_cert((d / "x.key").string());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message.find("public-key"), std::string::npos) << c.status().message;
  auto dir = read_curve_key_dir(d.string());
  EXPECT_FALSE(dir.ok());
  auto missing = read_curve_key_dir((d / "nope").string());
  EXPECT_EQ(missing.status().code, ErrorCode::not_found);
  // --curve-key must be a secret file, and the two client flags go together.
  auto keys = make_curve_keypair();
  ASSERT_TRUE(write_curve_cert((d / "ok").string(), *keys).ok());
  auto pub_only = load_curve_client_keys((d / "ok.key").string(), (d / "ok.key").string());
  ASSERT_FALSE(pub_only.ok());
  EXPECT_EQ(pub_only.status().message.rfind("curve-key:", 0), 0u) << pub_only.status().message;
  auto half = load_curve_client_keys((d / "ok.key").string(), "");
  ASSERT_FALSE(half.ok());
  EXPECT_EQ(half.status().message.rfind("curve-key:", 0), 0u);
  auto none = load_curve_server_keys((d / "ok.key_secret").string(), "", "");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message.find("--client-keys"), std::string::npos);
  fs::remove_all(d);
}

TEST(CurveKeys, KeyDirListsEveryPublicKey) {
  fs::path d = temp_dir("dir");
  std::vector<std::string> want;
  for (const char* n : {"b", "a", "c"}) {
    auto k = make_curve_keypair();
    ASSERT_TRUE(write_curve_cert((d / n).string(), *k).ok());
    want.push_back(k->public_key);
  }
  auto got = read_curve_key_dir(d.string());
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  ASSERT_EQ(got->size(), 3u);  // .key_secret files are not read as allow-list entries
  std::sort(want.begin(), want.end());
  std::vector<std::string> have = *got;
  std::sort(have.begin(), have.end());
  EXPECT_EQ(have, want);
  fs::remove_all(d);
}

TEST(Roles, ClientOpsAndTrainerOps) {
  for (const char* op :
       {"generate", "score", "abort", "get_load", "health", "get_model_info", "open_session", "close_session",
        "get_weight_version", "get_weights_checksum", "get_engines", "tokenize", "detokenize", "ping"}) {
    EXPECT_TRUE(authorize_op(op, "client").ok()) << op;
    EXPECT_TRUE(authorize_op(op, "trainer").ok()) << op;
  }
  for (const char* op :
       {"update_weights", "release_memory", "resume_memory", "flush_cache", "shutdown", "some_future_op"}) {
    Status st = authorize_op(op, "client");
    EXPECT_EQ(st.code, ErrorCode::permission_denied) << op;
    EXPECT_NE(st.message.find(std::string("'") + op + "'"), std::string::npos) << st.message;
    EXPECT_TRUE(authorize_op(op, "trainer").ok()) << op;
    EXPECT_TRUE(authorize_op(op, "").ok()) << op;  // not a CURVE connection: no roles
  }
  EXPECT_EQ(authorize_op("generate", "stranger").code, ErrorCode::permission_denied);
  EXPECT_STREQ(error_code_name(ErrorCode::permission_denied), "permission_denied");
  EXPECT_EQ(error_code_from_name("permission_denied"), ErrorCode::permission_denied);
}

}  // namespace
}  // namespace zr
