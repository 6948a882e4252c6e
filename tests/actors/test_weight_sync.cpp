// Weight updates end to end by each path: a random engine shaped like stories260K receives the real
// weights and then matches reference.json; refused pushes leave the old version serving; segments
// are reused, refused or replaced; subset updates; tensors from memory.
#include "tests/actors/weight_sync_fixture.h"

namespace zr {
namespace {

// The segment form of the ipc path, whatever this host's automatic choice (pull where shmem THP
// is off): the tests below are about segments.
PublishOptions segments() {
  PublishOptions o;
  o.ipc_mode = IpcMode::segment;
  return o;
}

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
    auto r = trainer_->publish(real ? real_ : mo_dir(), v, segments());
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
  fresh.ipc_mode = IpcMode::segment;
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
  auto v1 = trainer_->publish(real_, 1, segments());
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
  ASSERT_TRUE(trainer_->publish(mo_dir(), 2, segments()).ok());
  auto other = std::move(ShmSegment::create("zr-test", 4096)).value();
  UpdateWeightsCall third = norm_update(3, other, 0.5f);
  third.shm_keep = true;
  third.shm_pool = {other.name()};
  st = raw_update(third);
  ASSERT_TRUE(st.ok()) << st.to_string();
  // The trainer's next publish targets v1's segment, which the engine can no longer reach: it is
  // sent again in a fresh segment within the same publish.
  auto v4 = trainer_->publish(real_, 4, segments());
  ASSERT_TRUE(v4.ok()) << v4.status().to_string();
  EXPECT_FALSE(v4->shm_reused);
  EXPECT_NE(v4->shm_segment, v1->shm_segment);
  EXPECT_EQ(*trainer_->weight_version(), 4);
  EXPECT_EQ(served_greedy("v4"), expected());
  // A disk update makes the engine forget every kept mapping: the next ipc publish is resent fresh.
  PublishOptions disk;
  disk.path = WeightPath::disk;
  ASSERT_TRUE(trainer_->publish(mo_dir(), 5, disk).ok());
  auto v6 = trainer_->publish(real_, 6, segments());
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
  ASSERT_TRUE(trainer_->publish(real_, 1, segments()).ok());
  ASSERT_TRUE(trainer_->publish(mo_dir(), 2, segments()).ok());
  EXPECT_EQ(trainer_->held_segments(), 2u);
  for (int i = 0; i < 3; ++i) {
    auto stale = trainer_->publish(real_, 1, segments());
    ASSERT_FALSE(stale.ok());
    EXPECT_EQ(trainer_->held_segments(), 2u) << "after refused publish " << i + 1;
  }
  auto v3 = trainer_->publish(real_, 3, segments());
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
  auto v1 = trainer->publish(real_, 1, segments());
  ASSERT_TRUE(v1.ok()) << v1.status().to_string();
  auto v2 = trainer->publish(mo_dir(), 2, segments());
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
  auto v4 = trainer->publish(real_, 4, segments());
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
  auto v5 = trainer->publish(mo_dir(), 5, segments());
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
  ASSERT_TRUE(trainer_->publish(real_, 1, segments()).ok());
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
  auto ipc = trainer_->publish(refs, 1, segments());
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
  auto bad = trainer_->publish(claimed, 3, segments());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code, ErrorCode::checksum_mismatch);
  EXPECT_NE(bad.status().message.find("tensor " + refs[1].name), std::string::npos) << bad.status().message;

  std::vector<TensorRef> malformed = refs;
  malformed[2].nbytes -= 4;
  auto refused = trainer_->publish(malformed, 3, segments());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code, ErrorCode::invalid_argument);
  EXPECT_NE(refused.status().message.find("tensors[2] (" + refs[2].name + ")"), std::string::npos);
  EXPECT_EQ(*trainer_->weight_version(), 2);
  EXPECT_EQ(served_greedy("still"), expected());
  actor_->stop();
}

// The in-flight policies, stepped by hand on the engine.

}  // namespace
}  // namespace zr
