// Weight updates against running work: the in-flight policies stepped by hand on the engine, and
// release/resume of memory around a push.
#include <map>

#include "tests/actors/weight_sync_fixture.h"

namespace zr {
namespace {

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

}  // namespace
}  // namespace zr
