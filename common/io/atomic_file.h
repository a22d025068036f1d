#pragma once
// Replacing a file so that a reader (the coordinator's revocation list, a resumed run loading
// its partition, a dashboard reading a report) sees the old content or the new, never half.
#include <sys/types.h>

#include <cstddef>
#include <functional>
#include <string>

namespace fl {

// Hands the file's bytes to the writer, one chunk at a time.
using ChunkSink = std::function<void(const void* data, std::size_t size)>;

// Writes what `produce` emits to a temporary file beside `path` (same directory, so the rename
// stays on one file system), fsyncs it, renames it over `path` and fsyncs the directory (the
// rename itself is durable when the call returns). On any failure, including
// an exception from `produce`, the temporary file is removed, `path` keeps its old content and
// std::runtime_error names the file and the reason. `mode` is what a new file is created with,
// filtered by the umask unless `exact_mode` (key material: 0600 whatever the umask).
void write_file_atomically(const std::string& path, const std::function<void(const ChunkSink&)>& produce,
                           mode_t mode = 0644, bool exact_mode = false);
void write_file_atomically(const std::string& path, const std::string& data, mode_t mode = 0644,
                           bool exact_mode = false);

// fsyncs a directory, so that the renames, creations and removals of entries in it survive a
// crash of the machine. std::runtime_error names the directory and the reason.
void sync_directory(const std::string& dir);

}  // namespace fl
