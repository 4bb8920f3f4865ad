// CompletionBatch: completions added while a batch is open are handed over per group, once, when
// it ends; without one, there is nothing to add to.
#include "sigsci/completion_batch.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sigsci {
namespace {

// Records each hand-over (which group, how many works) and runs the works, as a post would on
// the other thread.
struct Recorder {
    std::vector<std::string> handovers;
    std::vector<std::string> ran;
    auto post_for(const std::string& group) {
        return [this, group] {
            return [this, group](std::vector<CompletionBatch::Work> work) {
                handovers.push_back(group + ":" + std::to_string(work.size()));
                for (const auto& w : work) w();
            };
        };
    }
    CompletionBatch::Work work(const std::string& name) {
        return [this, name] { ran.push_back(name); };
    }
};

TEST(CompletionBatch, HandsOverEachGroupOnceWhenItEndsInOrder) {
    EXPECT_EQ(CompletionBatch::current(), nullptr);
    Recorder r;
    const int a = 0;
    const int b = 0;
    {
        CompletionBatch batch;
        ASSERT_EQ(CompletionBatch::current(), &batch);
        batch.add(&a, r.work("a1"), r.post_for("a"));
        batch.add(&b, r.work("b1"), r.post_for("b"));
        batch.add(&a, r.work("a2"), r.post_for("a"));
        batch.add(&a, r.work("a3"), r.post_for("a"));
        EXPECT_TRUE(r.handovers.empty()) << "nothing is handed over while the batch is open";
    }
    EXPECT_EQ(CompletionBatch::current(), nullptr);
    EXPECT_EQ(r.handovers, (std::vector<std::string>{"a:3", "b:1"}));
    EXPECT_EQ(r.ran, (std::vector<std::string>{"a1", "a2", "a3", "b1"}));
}

TEST(CompletionBatch, AnInnerBatchHandsOverWhenItEndsAndTheOuterOneIsCurrentAgain) {
    Recorder r;
    const int key = 0;
    CompletionBatch outer;
    outer.add(&key, r.work("outer"), r.post_for("o"));
    {
        CompletionBatch inner;
        EXPECT_EQ(CompletionBatch::current(), &inner);
        inner.add(&key, r.work("inner"), r.post_for("i"));
    }
    EXPECT_EQ(r.handovers, (std::vector<std::string>{"i:1"}));
    EXPECT_EQ(CompletionBatch::current(), &outer);
}

}  // namespace
}  // namespace sigsci
