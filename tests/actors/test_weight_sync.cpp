// Weight updates end to end: a random engine shaped like stories260K receives the real weights by
// each path and then matches reference.json; refused pushes leave the old version serving; the
// in-flight policies; subset updates; release/resume.
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
namespace {

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

TEST_F(WeightSync, IpcPushMakesTheEngineMatchTheReference) {
  serve();
  EXPECT_NE(served_greedy("before"), expected());
  auto res = trainer_->publish(real_, 1, PublishOptions{});
  ASSERT_TRUE(res.ok()) << res.status().to_string();
  EXPECT_EQ(res->acks.at(0).version, 1);
  EXPECT_GT(res->acks.at(0).zero_copy_tensors, 0);  // f32 matrices served in place from the segment
  EXPECT_EQ(served_greedy("after"), expected());
  EXPECT_EQ(*trainer_->weight_version(), 1);
  actor_->stop();
}

TEST_F(WeightSync, DiskPushAndBf16IntoF32Engine) {
  serve();
  PublishOptions disk;
  disk.path = WeightPath::disk;
  ASSERT_TRUE(trainer_->publish(real_, 5, disk).ok());
  EXPECT_EQ(served_greedy("disk"), expected());
  auto bf = zr::testing::shared_model_dir("stories260K-bf16");
  if (bf) {  // bf16 bytes converted once into the f32 engine: the bf16 model's greedy ids
    ASSERT_TRUE(trainer_->publish(*bf, 6, PublishOptions{}).ok());
    EXPECT_EQ(served_greedy("bf16"), expected());
  }
  actor_->stop();
}

TEST_F(WeightSync, RefusedPushesLeaveTheOldVersionServing) {
  serve();
  ASSERT_TRUE(trainer_->publish(real_, 1, PublishOptions{}).ok());
  auto before = served_greedy("v1");
  // Stale version.
  auto stale = trainer_->publish(real_, 1, PublishOptions{});
  ASSERT_FALSE(stale.ok());
  EXPECT_NE(stale.status().message.find("version"), std::string::npos);
  // Wrong shape and corrupted checksum, by hand through a segment.
  auto send = [&](UpdateWeightsCall call) { return raw_update(std::move(call)); };
  std::vector<float> bytes(64, 0.5f);
  auto seg = std::move(ShmSegment::create("zr-test", 4096)).value();
  std::memcpy(seg.data(), bytes.data(), 256);
  UpdateWeightsCall bad;
  bad.version = 2;
  bad.path = WeightPath::ipc;
  bad.tensors = {{"model.norm.weight", "F32", {32}, 128, checksum64(seg.data(), 128), 0}};
  bad.shm_name = seg.name();
  bad.shm_bytes = 4096;
  Status st = send(bad);
  EXPECT_EQ(st.code, ErrorCode::weight_mismatch) << st.to_string();
  EXPECT_NE(st.message.find("model.norm.weight"), std::string::npos);
  EXPECT_NE(st.message.find("rank"), std::string::npos);
  bad.tensors[0] = {"model.norm.weight", "F32", {64}, 256, 12345, 0};
  st = send(bad);
  EXPECT_EQ(st.code, ErrorCode::checksum_mismatch) << st.to_string();
  EXPECT_NE(st.message.find("model.norm.weight"), std::string::npos);
  EXPECT_EQ(*trainer_->weight_version(), 1);
  EXPECT_EQ(served_greedy("still-v1"), before);
  actor_->stop();
}

// The trainer writes each version into the segment the engine stopped serving from. Alternating
// two checkpoints makes stale bytes visible in the outputs.
TEST_F(WeightSync, IpcSegmentsAreReusedOnceNoEngineServesFromThem) {
  serve();
  const std::vector<int> random_ids = served_greedy("v0");
  std::vector<std::string> names;
  for (int v = 1; v <= 4; ++v) {
    const bool real = v % 2 == 1;
    auto r = trainer_->publish(real ? real_ : mo_dir(), v, PublishOptions{});
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    names.push_back(r->shm_segment);
    EXPECT_EQ(r->shm_reused, v >= 3) << "v" << v;
    EXPECT_EQ(r->acks.at(0).shm_in_use, std::vector<std::string>{r->shm_segment}) << "v" << v;
    EXPECT_GT(r->acks.at(0).zero_copy_tensors, 0);  // served from the (reused) segment in place
    EXPECT_EQ(served_greedy("v" + std::to_string(v)), real ? expected() : random_ids) << "v" << v;
  }
  EXPECT_NE(names[0], names[1]);
  EXPECT_EQ(names[2], names[0]);  // v3 rewrote v1's segment, v4 v2's
  EXPECT_EQ(names[3], names[1]);
  for (const auto& n : names)  // unlinked once mapped: nothing is left in /dev/shm
    EXPECT_EQ(ShmSegment::open(n, 0, true).status().code, ErrorCode::not_found) << n;
  EXPECT_EQ(trainer_->held_segments(), 2u);
  PublishOptions fresh;  // every publish in a new segment: the idle ones are dropped but one
  fresh.reuse_segments = false;
  for (int v = 5; v <= 7; ++v) {
    auto r = trainer_->publish(v % 2 ? real_ : mo_dir(), v, fresh);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_FALSE(r->shm_reused);
    EXPECT_EQ(trainer_->held_segments(), 2u) << "v" << v;
  }
  EXPECT_EQ(served_greedy("v7"), expected());
  actor_->stop();
}

TEST_F(WeightSync, RewritingAServedSegmentIsRefusedAndALostMappingGetsAFreshSegment) {
  serve();
  auto v1 = trainer_->publish(real_, 1, PublishOptions{});
  ASSERT_TRUE(v1.ok()) << v1.status().to_string();
  // A writer that reuses the segment the engine serves from breaks the contract: refused by name.
  auto scratch = std::move(ShmSegment::create("zr-test", 4096)).value();
  UpdateWeightsCall misuse = norm_update(2, scratch, 1.0f);
  misuse.shm_name = v1->shm_segment;
  misuse.shm_keep = true;
  misuse.shm_pool = {v1->shm_segment};
  Status st = raw_update(misuse);
  EXPECT_EQ(st.code, ErrorCode::invalid_argument) << st.to_string();
  EXPECT_NE(st.message.find("shm_name"), std::string::npos) << st.message;
  EXPECT_NE(st.message.find("serving weights"), std::string::npos) << st.message;
  EXPECT_EQ(*trainer_->weight_version(), 1);
  EXPECT_EQ(served_greedy("still-v1"), expected());
  // v2 goes to a second segment; then another writer's update lists only its own segment in
  // shm_pool, so the engine forgets the trainer's kept mappings.
  ASSERT_TRUE(trainer_->publish(mo_dir(), 2, PublishOptions{}).ok());
  auto other = std::move(ShmSegment::create("zr-test", 4096)).value();
  UpdateWeightsCall third = norm_update(3, other, 0.5f);
  third.shm_keep = true;
  third.shm_pool = {other.name()};
  st = raw_update(third);
  ASSERT_TRUE(st.ok()) << st.to_string();
  // The trainer's next publish targets v1's segment, which the engine can no longer reach: it is
  // sent again in a fresh segment within the same publish.
  auto v4 = trainer_->publish(real_, 4, PublishOptions{});
  ASSERT_TRUE(v4.ok()) << v4.status().to_string();
  EXPECT_FALSE(v4->shm_reused);
  EXPECT_NE(v4->shm_segment, v1->shm_segment);
  EXPECT_EQ(*trainer_->weight_version(), 4);
  EXPECT_EQ(served_greedy("v4"), expected());
  // A disk update makes the engine forget every kept mapping: the next ipc publish is resent fresh.
  PublishOptions disk;
  disk.path = WeightPath::disk;
  ASSERT_TRUE(trainer_->publish(mo_dir(), 5, disk).ok());
  auto v6 = trainer_->publish(real_, 6, PublishOptions{});
  ASSERT_TRUE(v6.ok()) << v6.status().to_string();
  EXPECT_FALSE(v6->shm_reused);
  EXPECT_EQ(served_greedy("v6"), expected());
  actor_->stop();
}

// Refused publishes: the trainer cannot know whether an engine that did not ack serves from the
// segment (a router's partial commit might), so it holds the segment; before its next publish it
// asks such engines (get_weight_version's shm_in_use) and lets go of what they do not use. Failed
// publishes in a row then cost no segment each.
TEST_F(WeightSync, RefusedPublishesInARowDoNotHoldASegmentEach) {
  serve();
  ASSERT_TRUE(trainer_->publish(real_, 1, PublishOptions{}).ok());
  ASSERT_TRUE(trainer_->publish(mo_dir(), 2, PublishOptions{}).ok());
  EXPECT_EQ(trainer_->held_segments(), 2u);
  for (int i = 0; i < 3; ++i) {
    auto stale = trainer_->publish(real_, 1, PublishOptions{});
    ASSERT_FALSE(stale.ok());
    EXPECT_EQ(trainer_->held_segments(), 2u) << "after refused publish " << i + 1;
  }
  auto v3 = trainer_->publish(real_, 3, PublishOptions{});
  ASSERT_TRUE(v3.ok()) << v3.status().to_string();
  EXPECT_EQ(trainer_->held_segments(), 2u);
  EXPECT_EQ(served_greedy("v3"), expected());
  actor_->stop();
}

// A trainer behind a router (ipc): one of the router's engines lost its mapping of the segment
// the trainer reuses. The fan-out then commits on one engine and fails with not_found on the
// other; the trainer resends the version in a fresh segment through the router, the engine that
// committed acks it as already served, the other commits it, and the publish succeeds.
TEST_F(WeightSync, ARouterFanOutWhereOneEngineLostItsMappingStillCommitsEverywhere) {
  const std::string base = "inproc://ws-router-" + std::to_string(reinterpret_cast<uintptr_t>(this));
  Routed routed = serve_routed(base);
  auto trainer = std::move(Trainer::connect(ctx_, {base + "-router"})).value();
  auto v1 = trainer->publish(real_, 1, PublishOptions{});
  ASSERT_TRUE(v1.ok()) << v1.status().to_string();
  auto v2 = trainer->publish(mo_dir(), 2, PublishOptions{});
  ASSERT_TRUE(v2.ok()) << v2.status().to_string();
  ASSERT_NE(v2->shm_segment, v1->shm_segment);
  // Another writer updates engine b alone and keeps none of the trainer's segments: b forgets its
  // mapping of v1's segment, which the trainer will reuse next.
  auto direct_b = std::move(Trainer::connect(ctx_, {base + "-b"})).value();
  auto other = std::move(ShmSegment::create("zr-test", 4096)).value();
  UpdateWeightsCall third = norm_update(3, other, 0.5f);
  third.shm_keep = true;
  third.shm_pool = {other.name()};
  auto client_b = std::move(Client::connect(base + "-b", &ctx_.zmq())).value();
  Client& cb = *client_b;
  third.req_id = cb.next_req_id();
  auto r3 = cb.call_raw("update_weights", wire::encode(third), {}, third.req_id, std::chrono::seconds(30)).get();
  ASSERT_TRUE(r3.ok() && r3->op == "update_weights.reply") << (r3.ok() ? r3->json.dump() : r3.status().to_string());
  auto v4 = trainer->publish(real_, 4, PublishOptions{});
  ASSERT_TRUE(v4.ok()) << v4.status().to_string();
  EXPECT_FALSE(v4->shm_reused) << "engine b was resent v4 in a fresh segment";
  // Both engines serve the real weights under v4, each from its own segment.
  auto direct_a = std::move(Trainer::connect(ctx_, {base + "-a"})).value();
  for (Trainer* t : {direct_a.get(), direct_b.get()}) {
    EXPECT_EQ(*t->weight_version(), 4);
    auto out = t->generate({greedy("v4")});
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    EXPECT_EQ(out->at(0).output_ids, expected());
  }
  ASSERT_EQ(v4->acks.size(), 1u);  // the router's merged ack
  std::vector<std::string> in_use = v4->acks[0].shm_in_use;
  std::sort(in_use.begin(), in_use.end());
  std::vector<std::string> want = {v1->shm_segment, v4->shm_segment};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(in_use, want) << "a serves from v1's (reused) segment, b from the fresh one";
  // Publishing goes on: v5 reaches both (engine a kept its mapping of the fresh segment too).
  auto v5 = trainer->publish(mo_dir(), 5, PublishOptions{});
  ASSERT_TRUE(v5.ok()) << v5.status().to_string();
  EXPECT_EQ(*direct_a->weight_version(), 5);
  EXPECT_EQ(*direct_b->weight_version(), 5);
  routed.stop();
}

// A streamed update whose writer stops (a trainer that died mid-write) times out; the old version
// keeps serving, and the same version written in full then commits.
TEST_F(WeightSync, AStalledStreamedWriteTimesOutAndTheOldVersionServes) {
  RolloutActorOptions ro;
  ro.transfer_timeout = std::chrono::milliseconds(300);
  serve(ro);
  ASSERT_TRUE(trainer_->publish(real_, 1, PublishOptions{}).ok());
  auto seg = std::move(ShmSegment::create("zr-test", 8192)).value();
  std::vector<float> norm(64, 1.0f);
  UpdateWeightsCall call;
  call.version = 2;
  call.path = WeightPath::ipc;
  call.tensors = {{"model.norm.weight", "F32", {64}, 256, 0, 0}};
  call.shm_name = seg.name();
  call.shm_bytes = 256;
  call.shm_offset = shm_stream_offset(1);
  call.shm_stream = true;
  ShmStreamWriter writer(seg.data(), call.shm_offset, 2);  // header set up, no bytes written
  // While the update is pending, the engine reports its segment as in use: it may still commit
  // from it, so a writer must not reuse it yet.
  auto in_use_now = [&] {
    Client& c = *client_;
    const uint64_t id = c.next_req_id();
    auto raw = c.call_raw("get_weight_version", wire::encode_req_id_only(id), {}, id, std::chrono::seconds(30)).get();
    EXPECT_TRUE(raw.ok());
    auto v = wire::weight_version_reply_from_json(raw->json);
    EXPECT_TRUE(v.ok());
    EXPECT_EQ(v->version, 1);
    return std::find(v->shm_in_use.begin(), v->shm_in_use.end(), seg.name()) != v->shm_in_use.end();
  };
  Client& c = *client_;
  call.req_id = c.next_req_id();
  auto pending = c.call_raw("update_weights", wire::encode(call), {}, call.req_id, std::chrono::seconds(30));
  EXPECT_TRUE(in_use_now()) << "a pending update's segment";
  auto reply = pending.get();
  ASSERT_TRUE(reply.ok());
  Status st = reply->op == "error" ? wire::status_from_error_json(reply->json) : Status{};
  EXPECT_EQ(st.code, ErrorCode::timeout) << st.to_string();
  EXPECT_NE(st.message.find("stopped writing at byte 0"), std::string::npos) << st.message;
  EXPECT_FALSE(in_use_now()) << "a failed update's segment";
  EXPECT_EQ(*trainer_->weight_version(), 1);
  EXPECT_EQ(served_greedy("still-v1"), expected());
  // The written count is a prefix of the transfer: tensors out of offset order are refused.
  UpdateWeightsCall unordered = call;
  unordered.tensors = {{"model.norm.weight", "F32", {64}, 256, 0, 256},
                       {"model.layers.0.input_layernorm.weight", "F32", {64}, 256, 0, 0}};
  unordered.shm_bytes = 512;
  unordered.shm_offset = shm_stream_offset(2);
  st = raw_update(unordered);
  EXPECT_EQ(st.code, ErrorCode::invalid_argument) << st.to_string();
  EXPECT_NE(st.message.find("tensors[1].offset"), std::string::npos) << st.message;
  writer.write(0, call.tensors[0], norm.data());
  st = raw_update(call);
  EXPECT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(*trainer_->weight_version(), 2);
  actor_->stop();
}

TEST_F(WeightSync, SubsetUpdates) {
  serve();
  PublishOptions all_but_last;
  PublishOptions last;
  auto cfg = ModelConfig::from_dir(real_);
  for (const TensorSpec& s : model_tensor_specs(*cfg)) {
    if (s.optional) continue;
    (s.layer == cfg->num_layers - 1 ? last.only : all_but_last.only).push_back(s.name);
  }
  ASSERT_TRUE(trainer_->publish(real_, 1, all_but_last).ok());
  EXPECT_NE(served_greedy("partial"), expected());  // the last layer is still random
  auto r = trainer_->publish(real_, 2, last);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(served_greedy("complete"), expected());
  actor_->stop();
}

// Tensors held in memory (copies of the checkpoint's, as a trainer holds its state): by ipc, then
// written as a folder for a disk update (beside the config.json the caller put there); a
// claimed checksum that the bytes do not have is refused by the engine, naming the tensor; a
// malformed tensor is refused before anything is sent.
TEST_F(WeightSync, TensorsInMemoryByIpcAndDisk) {
  serve();
  auto ar = SafetensorsArchive::open_dir(real_);
  ASSERT_TRUE(ar.ok());
  std::vector<std::vector<uint8_t>> held;
  std::vector<TensorRef> refs;
  for (const auto& [name, v] : ar->tensors()) {
    const auto* p = static_cast<const uint8_t*>(v.data);
    held.emplace_back(p, p + v.nbytes);
    refs.push_back({name, dtype_name(v.dtype), v.shape, held.back().data(), v.nbytes, {}});
  }
  auto ipc = trainer_->publish(refs, 1, PublishOptions{});
  ASSERT_TRUE(ipc.ok()) << ipc.status().to_string();
  EXPECT_EQ(served_greedy("ipc"), expected());
  ASSERT_EQ(ipc->tensors.size(), refs.size());
  EXPECT_EQ(ipc->tensors[0].checksum, checksum64(refs[0].data, refs[0].nbytes));

  PublishOptions disk;
  disk.path = WeightPath::disk;
  disk.disk_dir = tmp_.path() + "/published";
  auto no_config = trainer_->publish(refs, 2, disk);  // an in-process engine has no model folder to copy it from
  ASSERT_FALSE(no_config.ok());
  EXPECT_NE(no_config.status().message.find("config.json"), std::string::npos) << no_config.status().message;
  std::filesystem::copy_file(real_ + "/config.json", disk.disk_dir + "/config.json");
  auto d = trainer_->publish(refs, 2, disk);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_TRUE(std::filesystem::exists(disk.disk_dir + "/config.json"));
  EXPECT_TRUE(SafetensorsArchive::open_dir(disk.disk_dir).ok());
  EXPECT_EQ(served_greedy("disk"), expected());

  std::vector<TensorRef> claimed = refs;
  claimed[1].checksum = checksum64(refs[1].data, refs[1].nbytes) ^ 1;
  auto bad = trainer_->publish(claimed, 3, PublishOptions{});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code, ErrorCode::checksum_mismatch);
  EXPECT_NE(bad.status().message.find("tensor " + refs[1].name), std::string::npos) << bad.status().message;

  std::vector<TensorRef> malformed = refs;
  malformed[2].nbytes -= 4;
  auto refused = trainer_->publish(malformed, 3, PublishOptions{});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code, ErrorCode::invalid_argument);
  EXPECT_NE(refused.status().message.find("tensors[2] (" + refs[2].name + ")"), std::string::npos);
  EXPECT_EQ(*trainer_->weight_version(), 2);
  EXPECT_EQ(served_greedy("still"), expected());
  actor_->stop();
}

// The in-flight policies, stepped by hand on the engine.
struct PolicyRun {
  std::map<std::string, std::vector<SampleOutput>> samples;
  int64_t preemptions = 0;
  bool committed = false;
};

PolicyRun run_policy(const std::string& model, const std::string& real, InFlightPolicy policy,
                     const std::vector<GenerateRequest>& reqs, const GenerateRequest& late) {
  auto eng = testing::load_engine(model);
  for (const auto& r : reqs) EXPECT_TRUE(eng->submit(r).ok());
  PolicyRun run;
  StepOutputs out;
  for (int i = 0; i < 6; ++i) eng->step(out);  // everyone has produced a few tokens
  auto staged = stage_from_disk(eng->weights(), real, 1);
  EXPECT_TRUE(staged.ok());
  EXPECT_TRUE(eng->request_update(std::move(staged).value(), {policy, false}, out).ok());
  EXPECT_TRUE(eng->submit(late).ok());
  while (!eng->idle()) eng->step(out);
  for (auto& o : out.finished) run.samples[o.rid].push_back(o);
  for (auto& c : out.committed) run.committed |= c.first == 1 && c.second.ok();
  run.preemptions = eng->stats().preemptions;
  return run;
}

TEST_F(WeightSync, InFlightPolicies) {
  std::vector<GenerateRequest> reqs;
  for (int i = 0; i < 4; ++i) {
    auto r = greedy("r" + std::to_string(i), 20 + i);
    r.sampling_params.temperature = i % 2 ? 0.8f : 0.0f;
    r.sampling_params.seed = i;
    reqs.push_back(r);
  }
  auto late = greedy("late");
  for (InFlightPolicy p :
       {InFlightPolicy::drain, InFlightPolicy::abort, InFlightPolicy::continue_, InFlightPolicy::recompute}) {
    SCOPED_TRACE(wire::in_flight_name(p));
    PolicyRun run = run_policy(mo_dir(), real_, p, reqs, late);
    EXPECT_TRUE(run.committed);
    ASSERT_EQ(run.samples.size(), 5u);  // no request lost
    const auto& late_spans = run.samples["late"][0].meta_info.weight_version_spans;
    ASSERT_EQ(late_spans.size(), 1u);
    EXPECT_EQ(late_spans[0].version, 1);  // queued work runs on the new weights
    EXPECT_EQ(run.samples["late"][0].output_ids, expected());
    for (const auto& r : reqs) {
      const SampleOutput& o = run.samples[r.rid].at(0);
      const auto& spans = o.meta_info.weight_version_spans;
      ASSERT_FALSE(spans.empty());
      EXPECT_EQ(spans[0].first_token_index, 0);
      EXPECT_EQ(spans[0].version, 0);
      if (p == InFlightPolicy::drain) {
        EXPECT_EQ(spans.size(), 1u);  // finished entirely on the old weights
        EXPECT_EQ(o.output_ids.size(), static_cast<size_t>(r.sampling_params.max_new_tokens));
      } else if (p == InFlightPolicy::abort) {
        EXPECT_EQ(o.meta_info.finish_reason.type, FinishReason::Type::abort);
        EXPECT_EQ(spans.size(), 1u);
      } else {
        ASSERT_EQ(spans.size(), 2u);  // the switch is recorded at the first new-weights token
        EXPECT_EQ(spans[1].version, 1);
        EXPECT_GT(spans[1].first_token_index, 0);
        EXPECT_EQ(o.output_ids.size(), static_cast<size_t>(r.sampling_params.max_new_tokens));
      }
    }
    if (p == InFlightPolicy::recompute) {
      EXPECT_GE(run.preemptions, 4);
    }
    if (p == InFlightPolicy::continue_) {
      EXPECT_EQ(run.preemptions, 0);
    }
  }
}

TEST_F(WeightSync, ReleaseAndResumeRoundTrip) {
  auto eng = testing::load_engine(real_);
  ASSERT_TRUE(eng->submit(greedy("a")).ok());
  auto before = run_to_completion(*eng).samples.at("a").at(0).output_ids;
  auto freed = eng->release_memory(true, true);
  ASSERT_TRUE(freed.ok());
  EXPECT_GT(*freed, 1000000u);  // ~1 MiB of weights + the KV pool
  EXPECT_EQ(eng->submit(greedy("b")).code, ErrorCode::unavailable);
  ASSERT_TRUE(eng->resume_memory(true, true).ok());
  ASSERT_TRUE(eng->submit(greedy("c")).ok());
  EXPECT_EQ(run_to_completion(*eng).samples.at("c").at(0).output_ids, before);
}

// release_memory / resume_memory over the wire; the reply as JSON (or the error's).
nlohmann::json memory_call(Client& c, const char* op, std::vector<std::string> tags) {
  MemoryCall call{c.next_req_id(), std::move(tags)};
  auto r = c.call_raw(op, wire::encode(call), {}, call.req_id, std::chrono::seconds(30)).get();
  EXPECT_TRUE(r.ok());
  return r.ok() ? r->json : nlohmann::json{};
}

// Issue 21: after a push, release and resume, the engine must not serve the model folder's bytes
// under the pushed version's number. It keeps the weights released (generate refused, health
// "released", the resume reply's version null) until an update commits; then it serves exactly
// the pushed weights. For every path a version can arrive by on one host: ipc served in place
// (f32), ipc copied (bf16 into the f32 engine), disk.
TEST_F(WeightSync, ResumeAfterAPushServesNothingUntilTheNextUpdate) {
  struct Case {
    const char* what;
    std::string dir;
    WeightPath path;
  };
  std::vector<Case> cases = {{"ipc zero-copy", real_, WeightPath::ipc}, {"disk", real_, WeightPath::disk}};
  if (auto bf = zr::testing::shared_model_dir("stories260K-bf16"))
    cases.push_back({"ipc copied (bf16)", *bf, WeightPath::ipc});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    serve();
    const std::vector<int> folder_ids = served_greedy("folder");
    ASSERT_NE(folder_ids, expected());
    PublishOptions po;
    po.path = c.path;
    auto v1 = trainer_->publish(c.dir, 1, po);
    ASSERT_TRUE(v1.ok()) << v1.status().to_string();
    const int zero_copy = v1->acks.at(0).zero_copy_tensors;
    if (std::string(c.what) == "ipc zero-copy") {
      EXPECT_GT(zero_copy, 0);
    } else if (std::string(c.what) == "ipc copied (bf16)") {
      EXPECT_EQ(zero_copy, 0);
    }
    ASSERT_EQ(served_greedy("v1"), expected());
    Client& cl = *client_;
    auto rel = memory_call(cl, "release_memory", {"weights", "kv_cache"});
    ASSERT_EQ(rel.value("code", ""), "") << rel.dump();
    EXPECT_GT(rel["bytes"].get<uint64_t>(), 0u);
    auto res = memory_call(cl, "resume_memory", {"weights", "kv_cache"});
    ASSERT_EQ(res.value("code", ""), "") << res.dump();
    EXPECT_TRUE(res["version"].is_null()) << res.dump();  // nothing is served: v1's bytes are gone
    EXPECT_EQ(res["released"], nlohmann::json::array({"weights"})) << res.dump();
    EXPECT_GT(res["bytes"].get<uint64_t>(), 0u);  // the KV pool came back
    auto h = cl.health();
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(h->status, "released");
    EXPECT_EQ(h->weight_version, 1);
    // The folder's weights are not served under v1's number: generate is refused, saying why.
    GenerateRequest probe = greedy("after-resume");
    auto refused = cl.generate({probe});
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code, ErrorCode::unavailable);
    EXPECT_NE(refused.status().message.find("push a version"), std::string::npos) << refused.status().message;
    // A subset update cannot make the weights whole: still refused.
    PublishOptions subset;  // by ipc: a disk update loads a whole folder
    subset.only = {"model.norm.weight"};
    ASSERT_TRUE(trainer_->publish(c.dir, 2, subset).ok());
    EXPECT_EQ(cl.generate({probe}).status().code, ErrorCode::unavailable);
    // The wake-up flow: push the current weights under a new version; the engine serves them.
    auto v3 = trainer_->publish(c.dir, 3, po);
    ASSERT_TRUE(v3.ok()) << v3.status().to_string();
    EXPECT_EQ(served_greedy("v3"), expected());
    EXPECT_EQ(cl.health()->status, "serving");
    EXPECT_EQ(*trainer_->weight_version(), 3);
    actor_->stop();
    trainer_.reset();
    actor_.reset();
  }
}

// Without any push the served version is the folder's (0): resume reloads it, outputs unchanged.
TEST_F(WeightSync, ResumeWithoutAPushReloadsTheFolderVersion) {
  serve();
  const std::vector<int> before = served_greedy("before");
  Client& cl = *client_;
  auto rel = memory_call(cl, "release_memory", {"weights"});
  EXPECT_TRUE(rel["version"].is_null()) << rel.dump();
  EXPECT_EQ(cl.health()->status, "released");
  auto res = memory_call(cl, "resume_memory", {"weights"});
  EXPECT_EQ(res["version"], 0) << res.dump();
  EXPECT_EQ(res["released"], nlohmann::json::array()) << res.dump();
  EXPECT_GT(res["bytes"].get<uint64_t>(), 1000000u);  // ~1 MiB of weights reloaded
  EXPECT_EQ(cl.health()->status, "serving");
  EXPECT_EQ(served_greedy("after"), before);
  actor_->stop();
}

// Through a router: the merged resume reply says no weights are served while any engine waits for
// a push; the router routes nothing to released engines and serves again right after the push.
TEST_F(WeightSync, ARouterReportsReleasedEnginesAndServesAfterThePush) {
  const std::string base = "inproc://ws-rel-router-" + std::to_string(reinterpret_cast<uintptr_t>(this));
  Routed routed = serve_routed(base);
  auto trainer = std::move(Trainer::connect(ctx_, {base + "-router"})).value();
  ASSERT_TRUE(trainer->publish(real_, 1, PublishOptions{}).ok());
  auto client = std::move(Client::connect(base + "-router", &ctx_.zmq())).value();
  Client& cl = *client;
  auto rel = memory_call(cl, "release_memory", {"weights", "kv_cache"});
  ASSERT_EQ(rel.value("code", ""), "") << rel.dump();
  auto res = memory_call(cl, "resume_memory", {"weights", "kv_cache"});
  ASSERT_EQ(res.value("code", ""), "") << res.dump();
  EXPECT_TRUE(res["version"].is_null()) << res.dump();
  EXPECT_EQ(res["released"], nlohmann::json::array({"weights"})) << res.dump();
  EXPECT_EQ(cl.health()->status, "released");
  auto refused = cl.generate({greedy("refused")});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code, ErrorCode::unavailable) << refused.status().to_string();
  ASSERT_TRUE(trainer->publish(real_, 2, PublishOptions{}).ok());
  std::vector<GenerateRequest> two = {greedy("x"), greedy("y")};  // one per engine, by load
  auto out = trainer->generate(two);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  for (const auto& o : *out) {
    EXPECT_EQ(o.output_ids, expected());
    EXPECT_EQ(o.meta_info.weight_version, 2);
  }
  routed.stop();
}

// Every form of the ipc path, and the fallback from pull to segment, commits the reference
// weights with checksums verified: the engine then generates what a fresh start on them does.
class IpcModes : public WeightSync {
 protected:
  void TearDown() override {
    ::unsetenv("ZR_NO_IPC_PULL");
    ::unsetenv("ZR_NO_HUGEPAGES");
  }
  // Three pushes (new buffers twice, then a reused one) in `mode`; each must serve the reference.
  void three_pushes(IpcMode mode, const std::string& want_mode) {
    serve();
    EXPECT_NE(served_greedy("before"), expected());
    PublishOptions po;
    po.ipc_mode = mode;
    for (int64_t v = 1; v <= 3; ++v) {
      auto res = trainer_->publish(real_, v, po);
      ASSERT_TRUE(res.ok()) << res.status().to_string();
      EXPECT_EQ(res->ipc_mode, want_mode);
      EXPECT_EQ(res->acks.at(0).version, v);
      EXPECT_GT(res->acks.at(0).zero_copy_tensors, 0);  // served in place from the transfer buffer
      EXPECT_EQ(served_greedy("v" + std::to_string(v)), expected()) << "version " << v;
    }
    actor_->stop();
  }
};

TEST_F(IpcModes, PullCommitsTheReference) { three_pushes(IpcMode::pull, "pull"); }
TEST_F(IpcModes, SegmentCommitsTheReference) { three_pushes(IpcMode::segment, "segment"); }

TEST_F(IpcModes, ForcedSmallPagesStillCommitTheReference) {
  ::setenv("ZR_NO_HUGEPAGES", "1", 1);
  three_pushes(IpcMode::pull, "pull");
}

TEST_F(IpcModes, AnEngineThatCannotPullGetsSegmentsFromThenOn) {
  ::setenv("ZR_NO_IPC_PULL", "1", 1);
  serve();
  PublishOptions po;
  po.ipc_mode = IpcMode::pull;
  auto first = trainer_->publish(real_, 1, po);
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  EXPECT_EQ(first->ipc_mode, "pull+segment");  // refused the pull, then got a segment
  EXPECT_EQ(served_greedy("first"), expected());
  auto second = trainer_->publish(real_, 2, po);
  ASSERT_TRUE(second.ok()) << second.status().to_string();
  EXPECT_EQ(second->ipc_mode, "segment");  // not asked to pull again
  EXPECT_EQ(*trainer_->weight_version(), 2);
  actor_->stop();
}

TEST_F(IpcModes, APulledTensorThatDiffersFromItsChecksumIsRefused) {
  serve();
  const auto before = served_greedy("before");
  auto ar = SafetensorsArchive::open_dir(real_);
  ASSERT_TRUE(ar.ok());
  std::vector<TensorRef> refs;
  for (const auto& [name, v] : ar->tensors())
    refs.push_back({name, dtype_name(v.dtype), v.shape, v.data, v.nbytes, {}});
  refs.back().checksum = checksum64(refs.back().data, refs.back().nbytes) ^ 1;  // damaged before the publish
  PublishOptions po;
  po.ipc_mode = IpcMode::pull;
  auto res = trainer_->publish(refs, 1, po);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code, ErrorCode::checksum_mismatch) << res.status().to_string();
  EXPECT_NE(res.status().message.find(refs.back().name), std::string::npos) << res.status().message;
  EXPECT_EQ(*trainer_->weight_version(), 0);
  EXPECT_EQ(served_greedy("after"), before);
  actor_->stop();
}

TEST_F(IpcModes, APullFromAProcessThatIsGoneIsRefusedAsUnsupported) {
  serve();
  std::vector<float> bytes(64, 1.0f);
  UpdateWeightsCall call;
  call.version = 1;
  call.path = WeightPath::ipc;
  call.tensors = {{"model.norm.weight", "F32", {64}, 256, checksum64(bytes.data(), 256), 0}};
  call.shm_bytes = 256;
  call.shm_offset = 4096;
  call.shm_stream = true;
  call.pull_pid = 0x3fffffff;  // above pid_max: no such process
  call.pull_addr = 4096;
  Status st = raw_update(call);
  EXPECT_EQ(st.code, ErrorCode::unsupported) << st.to_string();
  EXPECT_NE(st.message.find("ipc pull"), std::string::npos) << st.message;
  EXPECT_EQ(*trainer_->weight_version(), 0);
  actor_->stop();
}

}  // namespace
}  // namespace zr
