#pragma once
// A small std::expected stand-in (g++ 12 has no <expected> in C++20): a value or an error message.
#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace sigsci {

struct Error {
    std::string message;
};

template <class T>
class Result {
  public:
    Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit on purpose, like expected
    Result(Error error) : v_(std::move(error)) {}

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }

    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    const std::string& error() const { return std::get<1>(v_).message; }

  private:
    std::variant<T, Error> v_;
};

}  // namespace sigsci
