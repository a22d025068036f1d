#include "common/privacy/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace fl {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// log(exp(a) + exp(b)) and log(exp(a) - exp(b)) (a >= b) without leaving log space.
double log_add(double a, double b) {
  if (a == -kInf) return b;
  if (b == -kInf) return a;
  const double hi = std::max(a, b);
  return hi + std::log1p(std::exp(std::min(a, b) - hi));
}

double log_sub(double a, double b) {
  if (b == -kInf) return a;
  if (a <= b) return -kInf;  // the series' partial sums only round to this
  return a + std::log1p(-std::exp(b - a));
}

// log(erfc(x)), also where erfc underflows (x beyond ~26): the asymptotic series
// erfc(x) ~ exp(-x^2) / (x sqrt(pi)) (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6)).
double log_erfc(double x) {
  if (x < 25) return std::log(std::erfc(x));
  const double r = 1 / (x * x);
  return -x * x - std::log(x) - 0.5 * std::log(M_PI) + std::log1p(-r / 2 + 3 * r * r / 4 - 15 * r * r * r / 8);
}

// log(A_alpha) for an integer order: sum_{i=0}^{alpha} C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2)).
double log_a_integer(double q, double sigma, int alpha) {
  double log_a = -kInf;
  for (int i = 0; i <= alpha; ++i) {
    const double log_binom = std::lgamma(alpha + 1.0) - std::lgamma(i + 1.0) - std::lgamma(alpha - i + 1.0);
    const double term = log_binom + i * std::log(q) + (alpha - i) * std::log1p(-q) +
                        (static_cast<double>(i) * i - i) / (2 * sigma * sigma);
    log_a = log_add(log_a, term);
  }
  return log_a;
}

// log(A_alpha) for a fractional order: the two series of Mironov et al. (2019), Sec. 3.3, with
// the generalised binomial coefficients (their sign alternates once i passes alpha).
double log_a_fractional(double q, double sigma, double alpha) {
  double log_a0 = -kInf, log_a1 = -kInf;
  const double z0 = sigma * sigma * std::log(1 / q - 1) + 0.5;
  double log_coef = 0;  // log |C(alpha, i)|
  bool positive = true;
  for (int i = 0;; ++i) {
    if (i > 0) {
      const double factor = (alpha - i + 1) / i;
      log_coef += std::log(std::fabs(factor));
      if (factor < 0) positive = !positive;
    }
    const double j = alpha - i;
    const double log_t0 = log_coef + i * std::log(q) + j * std::log1p(-q);
    const double log_t1 = log_coef + j * std::log(q) + i * std::log1p(-q);
    const double log_e0 = std::log(0.5) + log_erfc((i - z0) / (std::sqrt(2.0) * sigma));
    const double log_e1 = std::log(0.5) + log_erfc((z0 - j) / (std::sqrt(2.0) * sigma));
    const double log_s0 = log_t0 + (static_cast<double>(i) * i - i) / (2 * sigma * sigma) + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / (2 * sigma * sigma) + log_e1;
    if (positive) {
      log_a0 = log_add(log_a0, log_s0);
      log_a1 = log_add(log_a1, log_s1);
    } else {
      log_a0 = log_sub(log_a0, log_s0);
      log_a1 = log_sub(log_a1, log_s1);
    }
    if (std::max(log_s0, log_s1) < -30) break;
    if (i > 1000000) throw std::runtime_error("rdp accountant: the series for order " + std::to_string(alpha) + " does not converge");
  }
  return log_add(log_a0, log_a1);
}

}  // namespace

const std::vector<double>& default_rdp_orders() {
  static const std::vector<double> orders = [] {
    std::vector<double> o;
    for (int x = 1; x < 100; ++x) o.push_back(1 + x / 10.0);
    for (int a = 12; a < 64; ++a) o.push_back(a);
    for (double a : {128.0, 256.0, 512.0}) o.push_back(a);
    return o;
  }();
  return orders;
}

double rdp_sampled_gaussian(double q, double noise_multiplier, double order, double steps) {
  if (!(q >= 0 && q <= 1)) throw std::invalid_argument("rdp accountant: sampling rate " + std::to_string(q) + " is not in [0, 1]");
  if (!(noise_multiplier >= 0)) throw std::invalid_argument("rdp accountant: noise multiplier must be >= 0");
  if (!(order > 1)) throw std::invalid_argument("rdp accountant: order " + std::to_string(order) + " must be > 1");
  if (!(steps >= 0)) throw std::invalid_argument("rdp accountant: steps must be >= 0");
  if (q == 0 || steps == 0) return 0;
  if (noise_multiplier == 0 || std::isinf(order)) return kInf;
  const double sigma = noise_multiplier;
  if (q == 1) return steps * order / (2 * sigma * sigma);
  const double log_a = order == std::floor(order) && order < 1e6 ? log_a_integer(q, sigma, static_cast<int>(order))
                                                                 : log_a_fractional(q, sigma, order);
  return steps * log_a / (order - 1);
}

PrivacySpent epsilon_from_rdp(const std::vector<double>& orders, const std::vector<double>& rdp, double delta) {
  if (!(delta > 0 && delta < 1)) throw std::invalid_argument("rdp accountant: delta " + std::to_string(delta) + " is not in (0, 1)");
  if (orders.size() != rdp.size()) throw std::invalid_argument("rdp accountant: orders and RDP values differ in length");
  PrivacySpent best{kInf, delta, 0};
  for (size_t i = 0; i < orders.size(); ++i) {
    const double a = orders[i], r = rdp[i];
    if (!(r >= 0)) throw std::invalid_argument("rdp accountant: a negative or NaN RDP value");
    double eps;
    if (!(a > 1) || std::isinf(r)) {
      eps = kInf;
    } else if (delta * delta + std::expm1(-r) >= 0) {
      eps = 0;  // the KL bound: delta >= sqrt(1 - exp(-r)) already holds at epsilon 0
    } else {
      eps = std::max(0.0, r + std::log1p(-1 / a) - (std::log(delta) + std::log(a)) / (a - 1));
    }
    if (eps < best.epsilon) best = {eps, delta, a};
  }
  return best;
}

RdpAccountant::RdpAccountant(std::vector<double> orders) : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {
  if (orders_.empty()) throw std::invalid_argument("rdp accountant: no orders");
}

void RdpAccountant::compose(double q, double noise_multiplier, double steps) {
  for (size_t i = 0; i < orders_.size(); ++i) rdp_[i] += rdp_sampled_gaussian(q, noise_multiplier, orders_[i], steps);
}

std::string RdpAccountant::save() const {
  std::ostringstream out;
  out.precision(17);
  for (size_t i = 0; i < rdp_.size(); ++i) out << (i ? " " : "") << rdp_[i];
  return out.str();
}

void RdpAccountant::load(const std::string& text) {
  std::istringstream in(text);
  std::vector<double> values;
  std::string word;
  while (in >> word) {
    char* end = nullptr;
    const double v = std::strtod(word.c_str(), &end);
    if (end == word.c_str() || *end != '\0' || !(v >= 0))
      throw std::invalid_argument("rdp accountant state: '" + word + "' is not a non-negative number");
    values.push_back(v);
  }
  if (values.size() != orders_.size())
    throw std::invalid_argument("rdp accountant state: " + std::to_string(values.size()) + " values for " +
                                std::to_string(orders_.size()) + " orders");
  rdp_ = std::move(values);
}

}  // namespace fl
