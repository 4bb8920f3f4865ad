#pragma once
// Completions called together, handed over together. A sink that answers many requests at once
// (the spool's writer after a commit) opens a CompletionBatch around its SubmitDone calls; a
// caller whose completion must reach another thread (the server, posting to its I/O thread) then
// adds its work to the batch instead of posting it, and the batch posts each group's work as
// one hand-over when it ends. Without an open batch, completions post one by one as before.

#include <functional>
#include <utility>
#include <vector>

namespace sigsci {

class CompletionBatch {
  public:
    using Work = std::function<void()>;
    // Hands `work` over to the thread that must run it, in order, as one unit.
    using Post = std::function<void(std::vector<Work> work)>;

    CompletionBatch();   // the calling thread's current batch, until destroyed (nesting is fine:
                         // an inner batch hands over when it ends)
    ~CompletionBatch();  // posts every group's work, in the order the groups first came
    CompletionBatch(const CompletionBatch&) = delete;
    CompletionBatch& operator=(const CompletionBatch&) = delete;

    // The calling thread's innermost open batch, or null.
    static CompletionBatch* current();

    // Adds `work` to the group `key` (say, the target executor's context). A new group is
    // handed over, when the batch ends, by the Post that make_post() returns.
    template <class MakePost>
    void add(const void* key, Work work, MakePost&& make_post) {
        for (auto& g : groups_) {
            if (g.key == key) {
                g.work.push_back(std::move(work));
                return;
            }
        }
        groups_.push_back({key, Post(make_post()), {}});
        groups_.back().work.push_back(std::move(work));
    }

  private:
    struct Group {
        const void* key;
        Post post;
        std::vector<Work> work;
    };
    std::vector<Group> groups_;
    CompletionBatch* outer_;
};

}  // namespace sigsci
