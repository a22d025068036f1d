#pragma once
// Rényi-DP accountant for the sampled Gaussian mechanism: what client-level DP-FedAvg spends
// per round (each client in the round with probability q, its clipped update's sum noised with
// standard deviation z * C), composed over rounds, converted to (epsilon, delta).
//
// - RDP of one step at order alpha: log(A_alpha) / (alpha - 1), A_alpha as in Mironov, Talwar
//   and Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism" (2019), Sec. 3.3:
//   a finite binomial sum for integer orders, the two-sided erfc series for fractional ones.
//   q = 1 is the plain Gaussian mechanism, alpha / (2 z^2).
// - RDP composes additively over steps (rounds).
// - (epsilon, delta) from RDP: min over orders of rdp + log(1 - 1/alpha) - log(delta * alpha) /
//   (alpha - 1) (Balle et al. 2020, "Hypothesis testing interpretations and Rényi DP", Thm. 21),
//   the conversion of the reference accountant (Google's dp_accounting) whose published values
//   the tests check.
//
// The analysis assumes Poisson sampling of clients with probability q under add/remove-one
// adjacency; a round that takes exactly m of N clients is accounted with q = m / N, as Flower,
// TensorFlow Federated and Opacus do for fixed-size selection.
#include <string>
#include <vector>

namespace fl {

// Orders 1.1, 1.2, ..., 10.9, 12, 13, ..., 63, 128, 256, 512 (the reference accountant's defaults).
const std::vector<double>& default_rdp_orders();

// RDP at `order` of `steps` compositions of the sampled Gaussian mechanism with sampling rate q
// in [0, 1] and noise multiplier z >= 0 (z = 0: infinite; q = 0: none). Order > 1 (infinity
// allowed: infinite unless q = 0). Out-of-range arguments throw std::invalid_argument naming them.
double rdp_sampled_gaussian(double q, double noise_multiplier, double order, double steps = 1);

struct PrivacySpent {
  double epsilon = 0;     // the smallest over the orders (infinity when every order's is)
  double delta = 0;
  double order = 0;       // the order that gave it
};

// The (epsilon, delta) of an RDP curve (rdp[i] at orders[i]), delta in (0, 1).
PrivacySpent epsilon_from_rdp(const std::vector<double>& orders, const std::vector<double>& rdp, double delta);

// Composes rounds of the sampled Gaussian mechanism and reports (epsilon, delta) so far. Its
// state is the RDP curve, so that a run that resumes from a checkpoint goes on accounting.
class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = default_rdp_orders());
  // One round (or `steps` identical ones) at sampling rate q with noise multiplier z.
  void compose(double q, double noise_multiplier, double steps = 1);
  PrivacySpent spent(double delta) const { return epsilon_from_rdp(orders_, rdp_, delta); }
  const std::vector<double>& rdp() const { return rdp_; }
  // The RDP curve as text (one number per order) and back; a curve of another length, or not a
  // number, throws std::invalid_argument.
  std::string save() const;
  void load(const std::string& text);

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;
};

}  // namespace fl
