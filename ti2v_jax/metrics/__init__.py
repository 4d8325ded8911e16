"""The paper's evaluation: FVD with the Kinetics-400 I3D (`i3d`), streamed statistics, the Fréchet
distance and tFVD/sFVD (`fvd`), PSNR/SSIM (`frames`), reading clips (`videos`), the run behind
`ti2v-jax evaluate` (`evaluate`), and the UCF101/MUG protocol as manifests (`datasets`)."""
