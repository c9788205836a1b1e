// kubebox: the real Kubernetes components gpulet's end-to-end tests run against, in one
// binary built from their published source (one link instead of five):
//
//	kubebox etcd --data-dir D --client-url U --peer-url P
//	kubebox kube-apiserver|kube-controller-manager|kube-scheduler FLAGS (theirs, unchanged)
//	kubebox node FLAGS (kubelet's device manager and pod-resources server; see node.go)
//	kubebox describe --kubeconfig F KIND NAME (kubectl describe's output; see describe.go)
//
// It is a test fixture: nothing of it ships.
package main

import (
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kubebox etcd|kube-apiserver|kube-controller-manager|kube-scheduler|node|kustomize|describe|version [flags]")
		os.Exit(2)
	}
	name := os.Args[1]
	os.Args = append([]string{"kubebox " + name}, os.Args[2:]...)
	switch name {
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "etcd":
		os.Exit(runEtcd(os.Args[1:]))
	case "node":
		os.Exit(runNode(os.Args[1:]))
	case "kustomize":
		os.Exit(runKustomize(os.Args[1:]))
	case "describe":
		os.Exit(runDescribe(os.Args[1:]))
	case "version":
		fmt.Println(kubernetesVersion())
	default:
		fmt.Fprintf(os.Stderr, "kubebox: unknown component %q\n", name)
		os.Exit(2)
	}
}
