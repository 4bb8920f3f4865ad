#include "sigsci/completion_batch.hpp"

#include <utility>

namespace sigsci {

namespace {
thread_local CompletionBatch* innermost = nullptr;
}  // namespace

CompletionBatch::CompletionBatch() : outer_(innermost) {
    innermost = this;
}

CompletionBatch::~CompletionBatch() {
    innermost = outer_;
    for (auto& g : groups_) g.post(std::move(g.work));
}

CompletionBatch* CompletionBatch::current() {
    return innermost;
}

}  // namespace sigsci
