// The trainer publishes a checkpoint folder's weights only: the registry of the folder's
// config.json (model_tensor_specs) says which tensors those are. A checkpoint holding a recomputed
// buffer (rotary_emb.inv_freq) and other non-weight state beside the weights publishes, the engine
// takes the update, and the extra tensors never reach it (an engine refuses names it does not know,
// so a trainer that sent them would fail the publish).
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "actors/rollout_actor.h"
#include "actors/trainer.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "runtime/context.h"
#include "tests/actors/engine_test_util.h"
#include "tests/test_util.h"

namespace zr {
namespace {

const std::string kModel = std::string(ZR_SOURCE_DIR) + "/models/stories260K";

// kModel's weights plus `extra` (name -> floats), written to `dir` with its config.json.
void write_checkpoint(const std::string& dir, const std::map<std::string, std::vector<float>>& extra) {
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kModel + "/config.json", dir + "/config.json");
  auto ar = SafetensorsArchive::open_dir(kModel);
  ASSERT_TRUE(ar.ok()) << ar.status().to_string();
  std::vector<TensorBytes> tensors;
  for (const auto& [name, v] : ar->tensors()) tensors.push_back({name, v.dtype, v.shape, v.data, v.nbytes});
  for (const auto& [name, values] : extra)
    tensors.push_back({name, DType::f32, {static_cast<int64_t>(values.size())}, values.data(), values.size() * 4});
  ASSERT_TRUE(write_safetensors(dir + "/model.safetensors", tensors).ok());
}

TEST(TrainerPublish, ACheckpointsNonWeightTensorsAreLeftOut) {
  zr::testing::TempDir tmp;
  const std::map<std::string, std::vector<float>> extra = {
      {"model.layers.0.self_attn.rotary_emb.inv_freq", {1.0f, 0.5f}},  // a buffer older transformers saved
      {"model.ema_decay", {0.999f}},                                   // training state, no weight at all
  };
  write_checkpoint(tmp / "ckpt", extra);

  Context ctx;
  RolloutActor actor(ctx, testing::load_engine(kModel), RolloutActorOptions{});
  ASSERT_TRUE(actor.bind("inproc://trainer-publish-filter").ok());
  actor.start();
  auto trainer = Trainer::connect(ctx, {actor.endpoint()});
  ASSERT_TRUE(trainer.ok()) << trainer.status().to_string();

  PublishOptions opt;
  opt.path = WeightPath::ipc;
  auto res = (*trainer)->publish(tmp / "ckpt", 2, opt);
  ASSERT_TRUE(res.ok()) << res.status().to_string();
  ASSERT_EQ(res->acks.size(), 1u);
  EXPECT_EQ(res->acks[0].version, 2);
  auto v = (*trainer)->weight_version(0);
  ASSERT_TRUE(v.ok()) << v.status().to_string();
  EXPECT_EQ(*v, 2);

  // Exactly the checkpoint's tensors the registry lists went out.
  auto cfg = ModelConfig::from_dir(kModel);
  ASSERT_TRUE(cfg.ok());
  const WeightNames registry(model_tensor_specs(*cfg));
  auto ar = SafetensorsArchive::open_dir(kModel);
  ASSERT_TRUE(ar.ok());
  std::set<std::string> want, sent;
  for (const auto& [name, view] : ar->tensors())
    if (registry.contains(name)) want.insert(name);
  for (const TensorMeta& m : res->tensors) sent.insert(m.name);
  EXPECT_EQ(sent, want);
  for (const auto& [name, values] : extra) EXPECT_EQ(sent.count(name), 0u) << name;
  actor.stop();
}

}  // namespace
}  // namespace zr
