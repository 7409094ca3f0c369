// dgpo.hpp: a header-only C++17 wrapper over dgpo.h (libdgpo).
//
// dgpo::Agent owns a DgpoAgent handle (RAII: closed in the destructor, movable, not copyable);
// failures throw dgpo::Error, which carries the DgpoStatus and the library's message. Strings
// from the library are copied into std::string and released at once, so nothing here needs
// freeing by hand.
//
// Thread safety is the C library's: ask() and search() may run concurrently on one Agent from
// several threads; destroying or moving an Agent must not overlap with any call on it.
#ifndef DGPO_HPP
#define DGPO_HPP

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>

#include "dgpo.h"

namespace dgpo {

/// A failed libdgpo call: the status and the library's message.
class Error : public std::runtime_error {
public:
    Error(DgpoStatus status, const std::string& message)
        : std::runtime_error(message), status_(status) {}
    /// The status the C call returned.
    DgpoStatus status() const noexcept { return status_; }

private:
    DgpoStatus status_;
};

namespace detail {
/// Take ownership of a library string: copy it and free the original.
inline std::string take(char* s) {
    if (s == nullptr) return std::string();
    std::string out(s);
    dgpo_string_free(s);
    return out;
}

/// Throw for a non-OK status, taking the message.
inline void check(DgpoStatus st, char* err) {
    std::string msg = take(err);
    if (st != DGPO_STATUS_OK) {
        if (msg.empty()) msg = dgpo_status_name(st);
        throw Error(st, msg);
    }
}
}  // namespace detail

/// The library version.
inline std::string version() { return dgpo_version(); }

/// Called with each completed step's JSON; return false to cancel the run.
using StepHandler = std::function<bool(const std::string& step_json)>;

/// An agent handle (see dgpo_open for the JSON configuration keys).
class Agent {
public:
    /// Open an agent from a JSON configuration; throws dgpo::Error on failure.
    static Agent open(const std::string& config_json) {
        DgpoAgent* handle = nullptr;
        char* err = nullptr;
        DgpoStatus st = dgpo_open(config_json.c_str(), &handle, &err);
        detail::check(st, err);
        return Agent(handle);
    }

    Agent(Agent&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Agent& operator=(Agent&& other) noexcept {
        if (this != &other) {
            dgpo_close(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    Agent(const Agent&) = delete;
    Agent& operator=(const Agent&) = delete;
    ~Agent() { dgpo_close(handle_); }

    /// Answer a question; returns the trace JSON. `on_step` (optional) sees each step as it
    /// completes; `cancel` (optional) stops the run when set to non-zero from any thread.
    /// Throws dgpo::Error (status DGPO_STATUS_CANCELLED when cancelled). An exception thrown
    /// by `on_step` cancels the run and is rethrown here.
    std::string ask(const std::string& question, const StepHandler& on_step = StepHandler(),
                    const std::atomic<std::int32_t>* cancel = nullptr) const {
        static_assert(sizeof(std::atomic<std::int32_t>) == sizeof(std::int32_t),
                      "std::atomic<int32_t> must have the layout of int32_t");
        static_assert(std::atomic<std::int32_t>::is_always_lock_free,
                      "the cancel flag must be lock-free");
        struct Ctx {
            const StepHandler* handler;
            std::exception_ptr error;
        } ctx{&on_step, nullptr};
        auto trampoline = [](const char* step_json, void* user) -> std::int32_t {
            auto* c = static_cast<Ctx*>(user);
            try {
                return (*c->handler)(std::string(step_json)) ? 0 : 1;
            } catch (...) {
                // Exceptions must not unwind through the C library.
                c->error = std::current_exception();
                return 1;
            }
        };
        char* json = nullptr;
        char* err = nullptr;
        DgpoStatus st = dgpo_ask(handle_, question.c_str(), on_step ? +trampoline : nullptr,
                                 &ctx, reinterpret_cast<const std::int32_t*>(cancel), &json,
                                 &err);
        if (ctx.error) {
            detail::take(json);
            detail::take(err);
            std::rethrow_exception(ctx.error);
        }
        detail::check(st, err);
        return detail::take(json);
    }

    /// The top `k` passages for `query` as a JSON array; throws dgpo::Error.
    std::string search(const std::string& query, std::size_t k) const {
        char* json = nullptr;
        char* err = nullptr;
        DgpoStatus st = dgpo_search(handle_, query.c_str(), k, &json, &err);
        detail::check(st, err);
        return detail::take(json);
    }

    /// The raw handle, for calls this wrapper does not cover.
    const DgpoAgent* get() const noexcept { return handle_; }

private:
    explicit Agent(DgpoAgent* handle) : handle_(handle) {}
    DgpoAgent* handle_;
};

}  // namespace dgpo

#endif  // DGPO_HPP
