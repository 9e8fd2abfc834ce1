// Shell completion for mesctl: `mesctl completion bash|zsh` prints a script, and the script
// asks `mesctl __complete WORD...` what fits where the cursor is. All the knowledge of
// commands, flags and stored names is here, in one place for both shells.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cmd {

// The script for `shell` ("bash" or "zsh"), or nullopt for another shell.
std::optional<std::string_view> completion_script(std::string_view shell);

// What completes the last of `words` (the words after "mesctl", the last one the word under
// the cursor, "" after a space), each beginning with that word. When the place takes a path,
// the one line ":files" or ":dirs" asks the shell for its own file-name completion. Names of
// resources and meshes come from the store that --config or --data-dir earlier in `words`
// (else the environment and defaults, as every command) point at; a store that does not
// exist is not created and gives no names.
std::vector<std::string> complete(const std::vector<std::string>& words);

}  // namespace cmd
