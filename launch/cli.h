#pragma once
// What the engram-* command lines share: the --set option and the error contract (any failure
// prints one line "<tool>: error: <message>" and exits 1; --help exits 0).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace engram::cli {

inline void add_set_option(CLI::App& app, std::vector<std::string>& overrides) {
  app.add_option("--set", overrides, "override a config field, e.g. train.max_steps=200 (repeatable)")
      ->type_name("FIELD=VALUE")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

// Parses the command line, then returns body()'s exit code.
template <class Body>
int run_tool(CLI::App& app, const char* tool, int argc, char** argv, Body body) {
  try {
    app.parse(argc, argv);
    return body();
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "%s: error: %s\n", tool, e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool, e.what());
  }
  return 1;
}

}  // namespace engram::cli
