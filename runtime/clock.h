// Time as the runtime sees it: a monotonic clock that tests replace with a fake one (a function
// returning the current TimePoint), so timers and heartbeats are stepped without sleeping.
#pragma once

#include <chrono>
#include <functional>

namespace zr {

using SteadyClock = std::chrono::steady_clock;
using TimePoint = SteadyClock::time_point;
using Millis = std::chrono::milliseconds;
using NowFn = std::function<TimePoint()>;

// A wait without a deadline (ZeroMQ's -1).
inline constexpr Millis kForever{-1};

}  // namespace zr
