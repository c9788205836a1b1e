package main

import (
	"fmt"
	"os"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// runKustomize is `kubectl kustomize DIR` (kubectl's own kustomize library): the
// kustomization's objects, as YAML on stdout.
func runKustomize(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: kubebox kustomize DIR")
		return 2
	}
	objects, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "kustomize:", err)
		return 1
	}
	out, err := objects.AsYaml()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kustomize:", err)
		return 1
	}
	_, _ = os.Stdout.Write(out)
	return 0
}
