// Text on the service: the tokenize / detokenize ops against the model folder's own tokenizer,
// token-only mode (a folder without a tokenizer serves input_ids, refuses text), and
// detokenize: false per request and per server. Through the client library over inproc, the
// actor stepped by hand.
#include <gtest/gtest.h>

#include <filesystem>
#include <future>

#include "actors/rollout_actor.h"
#include "comm/client.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

class TextOps : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = zr::testing::shared_model_dir("stories260K");
    if (!d) GTEST_SKIP() << "shared model 'stories260K' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models";
    dir_ = *d;
  }
  // An actor on `model_dir`, stepped by this thread, and a client to it.
  void serve(const std::string& model_dir, EngineOptions opt = {}) {
    RolloutActorOptions ro;
    ro.model_path = model_dir;
    actor_ = std::make_unique<RolloutActor>(ctx_, testing::load_engine(model_dir, opt), ro);
    const std::string ep = "inproc://text-ops-" + std::to_string(reinterpret_cast<uintptr_t>(this));
    ASSERT_TRUE(actor_->bind(ep).ok());
    client_ = std::move(Client::connect(ep, &ctx_.zmq())).value();
  }
  template <class F>
  auto run(F&& call) {
    auto f = std::async(std::launch::async, std::forward<F>(call));
    while (f.wait_for(0s) != std::future_status::ready) actor_->run_once(1ms);
    return f.get();
  }
  // The stories260K folder without its tokenizer (config and weights linked).
  std::string token_only_dir() {
    const std::string d = tmp_ / "token-only";
    fs::create_directories(d);
    for (const char* f : {"config.json", "model.safetensors"}) fs::create_symlink(fs::path(dir_) / f, fs::path(d) / f);
    return d;
  }
  static GenerateRequest greedy(const std::string& rid, std::vector<int> ids) {
    GenerateRequest r;
    r.rid = rid;
    r.input_ids = std::move(ids);
    r.sampling_params.temperature = 0.0f;
    r.sampling_params.max_new_tokens = 12;
    r.sampling_params.ignore_eos = true;
    return r;
  }

  testing::TempDir tmp_;
  Context ctx_;
  std::string dir_;
  std::unique_ptr<RolloutActor> actor_;
  std::unique_ptr<Client> client_;
};

TEST_F(TextOps, TokenizeAndDetokenizeUseTheModelsTokenizer) {
  serve(dir_);
  auto tok = std::move(Tokenizer::load(dir_)).value();
  const std::string text = "Once upon a time, caf\xC3\xA9.";
  auto ids = run([&] { return client_->tokenize(text); });
  ASSERT_TRUE(ids.ok()) << ids.status().to_string();
  EXPECT_EQ(*ids, tok.encode(text, true));
  auto bare = run([&] { return client_->tokenize(text, false); });
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(*bare, tok.encode(text, false));
  auto back = run([&] { return client_->detokenize(*ids); });
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(*back, text);
  auto kept = run([&] { return client_->detokenize(*ids, false); });
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, tok.decode(*ids, false));
  EXPECT_NE(*kept, *back);  // the BOS shows when special tokens are kept
  // A text prompt is tokenized exactly as the op says.
  GenerateRequest by_text = greedy("t", {});
  by_text.text = text;
  auto a = run([&] { return client_->generate({by_text}); });
  auto b = run([&] { return client_->generate({greedy("i", *ids)}); });
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->outputs[0].output_ids, b->outputs[0].output_ids);
  EXPECT_EQ(a->outputs[0].meta_info.prompt_tokens, static_cast<int>(ids->size()));
  auto out_of_vocab = run([&] { return client_->detokenize({5, 512}); });
  ASSERT_FALSE(out_of_vocab.ok());
  EXPECT_EQ(out_of_vocab.status().code, ErrorCode::out_of_range);
  EXPECT_EQ(out_of_vocab.status().message.rfind("input_ids[1]:", 0), 0u) << out_of_vocab.status().message;
}

TEST_F(TextOps, TokenOnlyModelServesIdsAndRefusesText) {
  serve(token_only_dir());
  ASSERT_FALSE(actor_->engine().tokenizer().has_text());
  auto r = run([&] { return client_->generate({greedy("ids", {1, 403, 407})}); });
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->outputs[0].output_ids.size(), 12u);
  EXPECT_EQ(r->outputs[0].text, "");
  // Same tokens as the full folder gives.
  auto full = testing::load_engine(dir_);
  ASSERT_TRUE(full->submit(greedy("ids", {1, 403, 407})).ok());
  EXPECT_EQ(testing::run_to_completion(*full).samples.at("ids").at(0).output_ids, r->outputs[0].output_ids);

  GenerateRequest text = greedy("text", {});
  text.text = "Once upon a time";
  auto t = run([&] { return client_->generate({text}); });
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code, ErrorCode::invalid_argument);
  EXPECT_EQ(t.status().message.rfind("text: this model has no tokenizer", 0), 0u) << t.status().message;
  GenerateRequest stop = greedy("stop", {1, 403});
  stop.sampling_params.stop = {"."};
  auto s = run([&] { return client_->generate({stop}); });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().message.rfind("sampling_params.stop:", 0), 0u) << s.status().message;
  auto tk = run([&] { return client_->tokenize("hi"); });
  ASSERT_FALSE(tk.ok());
  EXPECT_EQ(tk.status().message.rfind("text:", 0), 0u) << tk.status().message;
  auto dt = run([&] { return client_->detokenize({1, 2}); });
  ASSERT_FALSE(dt.ok());
  EXPECT_EQ(dt.status().message.rfind("input_ids:", 0), 0u) << dt.status().message;
}

TEST_F(TextOps, DetokenizeFalseLeavesTextEmpty) {
  serve(dir_);
  GenerateRequest on = greedy("on", {1, 403, 407});
  on.stream = true;
  GenerateRequest off = on;
  off.rid = "off";
  off.detokenize = false;
  std::string streamed_off;
  auto a = run([&] { return client_->generate({on}); });
  auto b = run([&] { return client_->generate_stream({off}, [&](const StreamChunk& c) { streamed_off += c.text; }); });
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().to_string();
  EXPECT_FALSE(a->outputs[0].text.empty());
  EXPECT_EQ(b->outputs[0].text, "");
  EXPECT_EQ(streamed_off, "");
  EXPECT_EQ(a->outputs[0].output_ids, b->outputs[0].output_ids);
  off.rid = "stop";
  off.sampling_params.stop = {"."};
  auto s = run([&] { return client_->generate({off}); });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().message.rfind("sampling_params.stop:", 0), 0u) << s.status().message;
}

TEST_F(TextOps, ServerWideNoDetokenize) {
  EngineOptions opt;
  opt.detokenize = false;
  serve(dir_, opt);
  auto r = run([&] { return client_->generate({greedy("a", {1, 403, 407})}); });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outputs[0].text, "");
  EXPECT_EQ(r->outputs[0].output_ids.size(), 12u);
  auto ids = run([&] { return client_->tokenize("Once"); });  // the ops still work
  ASSERT_TRUE(ids.ok());
}

}  // namespace
}  // namespace zr
