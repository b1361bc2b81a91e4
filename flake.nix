{
  description = "xrun: declarative, hermetic, attested ML experiment runner";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachSystem [ "x86_64-linux" "aarch64-linux" ] (system:
      let
        pkgs = import nixpkgs { inherit system; };
        py = pkgs.python3;
        runtimeDeps = ps: with ps; [
          docker
          pyyaml
          jsonschema
          requests
          cryptography
          packaging
          installer
          rich
          packageurl-python
          plotly
        ] ++ pkgs.lib.optional (ps.pythonOlder "3.11") ps.tomli;
        xrun = py.pkgs.buildPythonApplication {
          pname = "xrun";
          version = "0.1.0";
          pyproject = true;
          src = ./.;
          build-system = [ py.pkgs.setuptools py.pkgs.wheel ];
          dependencies = runtimeDeps py.pkgs;
          optional-dependencies.s3 = [ py.pkgs.boto3 ];
          # The test suite needs a Docker engine and network fixtures; run it with scripts/test.
          doCheck = false;
          pythonImportsCheck = [ "runner" ];
          meta = {
            description = "Declarative, hermetic, attested ML experiment runner";
            mainProgram = "xrun";
          };
        };
      in
      {
        packages.default = xrun;
        packages.xrun = xrun;
        apps.default = flake-utils.lib.mkApp { drv = xrun; exePath = "/bin/xrun"; };
        devShells.default = pkgs.mkShell {
          packages = [
            (py.withPackages (ps: runtimeDeps ps ++ (with ps; [ pytest boto3 moto securesystemslib ])))
            pkgs.docker-client
            pkgs.mmdebstrap
            pkgs.docker-distribution
            pkgs.git
          ];
          shellHook = ''
            export PYTHONPATH=$PWD''${PYTHONPATH:+:$PYTHONPATH}
          '';
        };
      });
}
