// `zrollout tokenize` and `zrollout detokenize`: a model folder's tokenizer on the command line,
// to check what the engine will see (the same as the tokenize / detokenize ops of a server).
// Ids are written and read as a comma-separated list, so one command's output feeds the other.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>

#include "launch/commands.h"
#include "launch/engine_options.h"
#include "model/tokenizer.h"

namespace zr::cli {

namespace {

struct TextOptions {
  std::string model;
  std::string text, file;
  std::string ids;
  bool no_special = false;
  bool keep_special = false;
};

[[noreturn]] void fail(const std::string& what) {
  spdlog::error("{}", what);
  std::exit(EXIT_FAILURE);  // main() returns 0 once parsing succeeds
}

Tokenizer load_or_exit(const std::string& model) {
  set_process_logger("tokenizer", "warn");  // stdout carries only the result
  auto tok = Tokenizer::load(model);
  if (!tok.ok()) fail(tok.status().to_string());
  if (!tok->has_text()) fail("no tokenizer (tokenizer.json or tokenizer.model) in " + model);
  return std::move(tok).value();
}

std::vector<int> parse_ids(const std::string& s) {
  std::vector<int> ids;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    const size_t a = item.find_first_not_of(" \t\n"), b = item.find_last_not_of(" \t\n");
    if (a == std::string::npos) continue;
    char* end = nullptr;
    const long v = std::strtol(item.c_str() + a, &end, 10);
    if (end != item.c_str() + b + 1 || v < 0 || v > INT32_MAX) fail("--ids: '" + item + "' is not a token id");
    ids.push_back(static_cast<int>(v));
  }
  return ids;
}

}  // namespace

void add_tokenize(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the ids a text becomes with a model's tokenizer");
  auto o = std::make_shared<TextOptions>();
  cmd->add_option("--model", o->model, "model folder (tokenizer.json or tokenizer.model) or tokenizer file")
      ->required();
  CLI::Option* text = cmd->add_option("--text", o->text, "the text");
  CLI::Option* file = cmd->add_option("--file", o->file, "read the text from this file ('-': stdin)");
  text->excludes(file);
  cmd->add_flag("--no-special", o->no_special, "without the tokens the tokenizer adds around a text (BOS)");
  cmd->callback([o, text, file] {
    if (!*text && !*file) fail("tokenize: give --text or --file");
    Tokenizer tok = load_or_exit(o->model);
    std::string input = o->text;
    if (*file) {
      std::ifstream f(o->file, std::ios::binary);
      if (o->file != "-" && !f) fail("--file: cannot read " + o->file);
      std::istream& in = o->file == "-" ? std::cin : f;
      input.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    const std::vector<int> ids = tok.encode(input, !o->no_special);
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? "," : "") << ids[i];
    std::cout << '\n';
  });
}

void add_detokenize(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("detokenize", "Print the text ids decode to with a model's tokenizer");
  auto o = std::make_shared<TextOptions>();
  cmd->add_option("--model", o->model, "model folder (tokenizer.json or tokenizer.model) or tokenizer file")
      ->required();
  cmd->add_option("--ids", o->ids, "token ids, comma-separated (1,2,3)")->required();
  cmd->add_flag("--keep-special", o->keep_special, "keep special tokens (default: skipped, as generate does)");
  cmd->callback([o] {
    const std::vector<int> ids = parse_ids(o->ids);
    Tokenizer tok = load_or_exit(o->model);
    std::cout << tok.decode(ids, !o->keep_special) << '\n';
  });
}

}  // namespace zr::cli
