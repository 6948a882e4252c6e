// The fixture of the weight-update tests (test_weight_sync.cpp, test_weight_policies.cpp,
// test_ipc_modes.cpp): a random engine shaped like stories260K behind a RolloutActor, a Trainer
// and a raw Client beside it, and the reference output the real weights must give.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "actors/rollout_actor.h"
#include "actors/router/router.h"
#include "actors/router_actor.h"
#include "actors/trainer.h"
#include "comm/checksum.h"
#include "comm/client.h"
#include "comm/shm_segment.h"
#include "comm/shm_stream.h"
#include "comm/wire_weights.h"
#include "model/make_model.h"
#include "model/safetensors.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {

using testing::run_to_completion;

class WeightSync : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = zr::testing::shared_model_dir("stories260K");
    if (!d) GTEST_SKIP() << "shared model 'stories260K' not found: set ZROLLOUT_TEST_MODELS or place ../shared/models";
    real_ = *d;
    MakeModelOptions mo;
    mo.like_dir = real_;
    mo.seed = 3;
    mo.out_dir = tmp_.path() + "/random";
    ASSERT_TRUE(make_model(mo).ok());
    std::ifstream f(real_ + "/reference.json");
    ref_ = nlohmann::json::parse(f)["cases"][0];
  }
  GenerateRequest greedy(const std::string& rid, int max_new = 32) {
    GenerateRequest r;
    r.rid = rid;
    r.input_ids = ref_["prompt_ids"].get<std::vector<int>>();
    r.sampling_params.temperature = 0;
    r.sampling_params.max_new_tokens = max_new;
    r.sampling_params.ignore_eos = true;
    r.return_logprob = true;
    return r;
  }
  std::vector<int> expected() const { return ref_["greedy_ids"].get<std::vector<int>>(); }
  // A served random engine and a trainer connected to it over inproc.
  void serve(RolloutActorOptions ro = {}) {
    actor_ = std::make_unique<RolloutActor>(ctx_, testing::load_engine(mo_dir()), ro);
    ASSERT_TRUE(actor_->bind("inproc://ws-" + std::to_string(reinterpret_cast<uintptr_t>(this))).ok());
    actor_->start();
    trainer_ = std::move(Trainer::connect(ctx_, {actor_->endpoint()})).value();
    client_ = std::move(Client::connect(actor_->endpoint(), &ctx_.zmq())).value();
  }
  std::vector<int> served_greedy(const std::string& rid) {
    auto out = trainer_->generate({greedy(rid)});
    EXPECT_TRUE(out.ok()) << out.status().to_string();
    return out.ok() ? out->at(0).output_ids : std::vector<int>{};
  }
  std::string mo_dir() const { return tmp_.path() + "/random"; }
  // Two random engines behind a RouterActor over inproc: `base`-a, `base`-b and `base`-router.
  struct Routed {
    std::vector<std::unique_ptr<RolloutActor>> engines;
    std::unique_ptr<RouterActor> router;
    void stop() {
      router->stop();
      for (auto& e : engines) e->stop();
    }
  };
  Routed serve_routed(const std::string& base) {
    Routed r;
    for (const char* name : {"a", "b"}) {
      r.engines.push_back(std::make_unique<RolloutActor>(ctx_, testing::load_engine(mo_dir()), RolloutActorOptions{}));
      EXPECT_TRUE(r.engines.back()->bind(base + "-" + name).ok());
      r.engines.back()->start();
    }
    r.router = std::move(RouterActor::create(ctx_, {base + "-a", base + "-b"})).value();
    EXPECT_TRUE(r.router->bind(base + "-router").ok());
    r.router->start();
    return r;
  }

  // An update_weights written by hand, straight to the engine; ok or the engine's error.
  Status raw_update(UpdateWeightsCall call) {
    Client& c = *client_;
    call.req_id = c.next_req_id();
    auto r = c.call_raw("update_weights", wire::encode(call), {}, call.req_id, std::chrono::seconds(30)).get();
    EXPECT_TRUE(r.ok());
    if (!r.ok()) return r.status();
    return r->op == "error" ? wire::status_from_error_json(r->json) : Status{};
  }
  // An ipc update of model.norm.weight (64 floats of `value`) from `seg`.
  static UpdateWeightsCall norm_update(int64_t version, ShmSegment& seg, float value) {
    std::vector<float> bytes(64, value);
    std::memcpy(seg.data(), bytes.data(), 256);
    UpdateWeightsCall call;
    call.version = version;
    call.path = WeightPath::ipc;
    call.tensors = {{"model.norm.weight", "F32", {64}, 256, checksum64(seg.data(), 256), 0}};
    call.shm_name = seg.name();
    call.shm_bytes = 256;
    return call;
  }

  zr::testing::TempDir tmp_;
  std::string real_;
  nlohmann::json ref_;
  Context ctx_;
  std::unique_ptr<RolloutActor> actor_;
  std::unique_ptr<Trainer> trainer_;
  std::unique_ptr<Client> client_;  // raw calls straight to the engine, beside the trainer
};

}  // namespace zr
