package main

// The node: kubelet's own device manager (k8s.io/kubernetes/pkg/kubelet/cm/devicemanager)
// and Topology Manager, driven the way kubelet drives them, around pods bound to this node
// on a real API server; and kubelet's own pod-resources v1 server. What kubelet does that is
// not devices is played as little as the tests need: the Node object and its status (with
// the device plugins' capacity from the device manager), the node Lease, pod phases, and
// graceful deletion. Containers do not run; what each would have been given (devices,
// environment, mounts, annotations) is written to <report-dir>/<pod uid>.json.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	cadvisorapi "github.com/google/cadvisor/info/v1"
	"google.golang.org/grpc"
	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/kubernetes/pkg/kubelet/cm/containermap"
	"k8s.io/kubernetes/pkg/kubelet/cm/devicemanager"
)

// Annotations a test puts on a pod to play its containers (nothing runs here).
const (
	// Seconds the containers take to stop once the pod is deleted (within its grace period).
	stopSecondsAnnotation = "kubebox.gpulet.test/stop-seconds"
	// Seconds after which the containers exit 0 and the pod Succeeds.
	runSecondsAnnotation = "kubebox.gpulet.test/run-seconds"
)

type containerReport struct {
	Name        string            `json:"name"`
	Init        bool              `json:"init"`
	Devices     []string          `json:"devices"`
	Envs        map[string]string `json:"envs"`
	Mounts      []mountReport     `json:"mounts"`
	Annotations map[string]string `json:"annotations"`
	CDIDevices  []string          `json:"cdiDevices"`
	// The device IDs the device manager holds for the container, by resource.
	DeviceIDs map[string][]string `json:"deviceIds"`
	Error     string              `json:"error,omitempty"`
}

type mountReport struct {
	ContainerPath string `json:"containerPath"`
	HostPath      string `json:"hostPath"`
	ReadOnly      bool   `json:"readOnly"`
}

type podReport struct {
	Namespace  string            `json:"namespace"`
	Name       string            `json:"name"`
	UID        string            `json:"uid"`
	Admitted   bool              `json:"admitted"`
	Reason     string            `json:"reason,omitempty"`
	Message    string            `json:"message,omitempty"`
	Containers []containerReport `json:"containers"`
	// Set when the pod stopped holding its devices (its containers stopped or exited).
	Stopped bool `json:"stopped"`
}

type podState struct {
	pod      *v1.Pod
	admitted bool
	stopped  bool
	stopAt   time.Time // zero until the pod is deleted or set to finish
	report   podReport
}

type node struct {
	name      string
	client    kubernetes.Interface
	k         *managers // kubelet's own, as the release built against spells their calls
	reportDir string
	store     cache.Store
	queue     workqueue.DelayingInterface // of keys (untyped: client-go 0.31 has no typed one)
	logger    klog.Logger

	mu   sync.Mutex
	pods map[types.UID]*podState
}

func runNode(args []string) int {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	klog.InitFlags(fs)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (the node's identity)")
	name := fs.String("node-name", "", "this node's name")
	pluginDir := fs.String("plugin-dir", "", "device-plugin directory (kubelet.sock is served there)")
	podResources := fs.String("pod-resources-socket", "", "where to serve pod-resources v1")
	reportDir := fs.String("report-dir", "", "where each pod's report is written")
	numa := fs.Int("numa-nodes", 2, "NUMA nodes of the machine")
	policy := fs.String("topology-manager-policy", "none", "none, best-effort, restricted or single-numa-node")
	scope := fs.String("topology-manager-scope", "container", "container or pod")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *name == "" || *pluginDir == "" || *podResources == "" || *reportDir == "" {
		fmt.Fprintln(os.Stderr, "node: --node-name, --plugin-dir, --pod-resources-socket and --report-dir are required")
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	logger := klog.Background()
	ctx = klog.NewContext(ctx, logger)
	if err := serveNode(ctx, logger, *kubeconfig, *name, *pluginDir, *podResources, *reportDir, *numa, *policy, *scope); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return 1
	}
	return 0
}

func serveNode(ctx context.Context, logger klog.Logger, kubeconfig, name, pluginDir, podResources, reportDir string, numa int, policy, scope string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(reportDir, 0o755); err != nil {
		return err
	}
	topology := make([]cadvisorapi.Node, numa)
	for i := range topology {
		topology[i] = cadvisorapi.Node{Id: i, Cores: []cadvisorapi.Core{{Id: i, Threads: []int{i}}}}
	}
	k, err := newManagers(logger, filepath.Join(pluginDir, "kubelet.sock"), topology, policy, scope)
	if err != nil {
		return err
	}
	n := &node{
		name: name, client: client, k: k, reportDir: reportDir, logger: logger,
		queue: workqueue.NewDelayingQueue(),
		pods:  map[types.UID]*podState{},
	}
	if err := n.register(ctx); err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", name).String()
		}))
	informer := factory.Core().V1().Pods().Informer()
	n.store = informer.GetStore()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			n.queue.Add(key)
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	// As kubelet starts: the device manager is told which containers the runtime has running
	// (after a restart: those of the pods it runs), and the pod sources are not ready until
	// the pods already bound here have been admitted again; meanwhile a running container
	// keeps what the device manager's checkpoint says, without asking a plugin.
	sources := &sourcesReady{}
	initial, running := runningContainers(n.store.List())
	if err := k.start(n.activePods, sources, initial, running); err != nil {
		return err
	}
	defer k.stop()

	stopServer, err := n.servePodResources(ctx, podResources)
	if err != nil {
		return err
	}
	defer stopServer()

	for _, obj := range n.store.List() {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			n.sync(ctx, key)
		}
	}
	sources.ready.Store(true)
	go n.heartbeat(ctx)
	go func() { <-ctx.Done(); n.queue.ShutDown() }()
	fmt.Fprintln(os.Stderr, "node: ready")
	for {
		key, quit := n.queue.Get()
		if quit {
			return nil
		}
		n.sync(ctx, key.(string))
		n.queue.Done(key)
	}
}

// runningContainers is what kubelet reads from its container runtime at start: which
// container of which pod runs (the pods' statuses say so here).
func runningContainers(objs []any) (containermap.ContainerMap, sets.Set[string]) {
	initial, running := containermap.NewContainerMap(), sets.New[string]()
	for _, obj := range objs {
		pod := obj.(*v1.Pod)
		if pod.Status.Phase != v1.PodRunning {
			continue
		}
		for _, c := range pod.Status.ContainerStatuses {
			id := strings.TrimPrefix(c.ContainerID, "containerd://")
			if id == "" || c.State.Running == nil {
				continue
			}
			initial.Add(string(pod.UID), c.Name, id)
			running.Insert(id)
		}
	}
	return initial, running
}

// sourcesReady is kubelet's: whether every pod source has been seen (here: the pods bound
// before this start have been admitted again).
type sourcesReady struct{ ready atomic.Bool }

func (*sourcesReady) AddSource(string) {}
func (s *sourcesReady) AllReady() bool { return s.ready.Load() }

// podSource is what kubelet's pod-resources server and device manager ask of the node.
type podSource interface {
	activePods() []*v1.Pod
	allPods() []*v1.Pod
	podByName(namespace, name string) (*v1.Pod, bool)
}

// activePods is kubelet's: admitted pods whose containers have not all stopped.
func (n *node) activePods() []*v1.Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*v1.Pod
	for _, st := range n.pods {
		if st.admitted && !st.stopped {
			out = append(out, st.pod)
		}
	}
	return out
}

func (n *node) sync(ctx context.Context, key string) {
	obj, exists, _ := n.store.GetByKey(key)
	if !exists {
		n.forget(key)
		return
	}
	pod := obj.(*v1.Pod)
	n.mu.Lock()
	st := n.pods[pod.UID]
	n.mu.Unlock()
	if st == nil {
		n.forget(key) // a pod of the same name before it
		if pod.DeletionTimestamp != nil || pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
			return
		}
		n.admit(ctx, key, pod)
		return
	}
	n.mu.Lock()
	st.pod = pod
	n.mu.Unlock()
	if st.stopped {
		if pod.DeletionTimestamp != nil {
			n.finishDeletion(ctx, pod)
		}
		return
	}
	now := time.Now()
	if pod.DeletionTimestamp != nil {
		// Deleted: the containers stop within the grace period, or sooner if so annotated
		// (a run-seconds end already due stays as it is).
		stop := now.Add(seconds(pod, stopSecondsAnnotation, gracePeriod(pod)))
		if st.stopAt.IsZero() || st.stopAt.After(stop) {
			st.stopAt = stop
		}
	}
	if st.stopAt.IsZero() {
		return
	}
	if now.Before(st.stopAt) {
		n.queue.AddAfter(key, st.stopAt.Sub(now))
		return
	}
	n.stop(ctx, st)
	if pod.DeletionTimestamp != nil {
		n.finishDeletion(ctx, pod)
	}
}

// forget drops what is known of pods under `key` (gone from the API, or replaced by a pod of
// the same name); the device manager then frees what they held. (Never call the device
// manager holding n.mu: it calls back into activePods.)
func (n *node) forget(key string) {
	n.mu.Lock()
	for uid, st := range n.pods {
		if k, _ := cache.MetaNamespaceKeyFunc(st.pod); k == key {
			delete(n.pods, uid)
			_ = os.Remove(filepath.Join(n.reportDir, string(uid)+".json"))
		}
	}
	n.mu.Unlock()
	n.k.updateAllocated()
}

// admit is kubelet's admission of a pod bound to it, as far as devices go: the Topology
// Manager's admit handler, which calls the device manager's Allocate for each init and then
// each app container; then, for each container as it would start, GetDeviceRunContainerOptions.
func (n *node) admit(ctx context.Context, key string, pod *v1.Pod) {
	others := n.activePods()
	// kubelet's pod manager holds the pod before admission, so it is among the active pods
	// while the device manager allocates (which frees what inactive pods hold).
	st := &podState{pod: pod, admitted: true}
	n.mu.Lock()
	n.pods[pod.UID] = st
	n.mu.Unlock()
	result := n.k.admit(ctx, pod, others)
	n.mu.Lock()
	st.admitted, st.stopped = result.Admit, !result.Admit
	st.report = podReport{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), Admitted: result.Admit, Reason: result.Reason, Message: result.Message}
	n.mu.Unlock()
	if !result.Admit {
		n.logger.Info("Pod rejected", "pod", klog.KObj(pod), "reason", result.Reason, "message", result.Message)
		n.writeReport(st)
		n.setStatus(ctx, pod, func(s *v1.PodStatus) {
			s.Phase = v1.PodFailed
			s.Reason = result.Reason
			s.Message = "Pod was rejected: " + result.Message
		})
		return
	}
	failed := ""
	run := func(c v1.Container, init bool) {
		r := containerReport{Name: c.Name, Init: init, Envs: map[string]string{}, Annotations: map[string]string{}, Devices: []string{}, Mounts: []mountReport{}, CDIDevices: []string{}}
		opts, err := n.k.runOptions(ctx, pod, &c)
		if err != nil {
			r.Error = err.Error()
			failed = err.Error()
		} else if opts != nil {
			for _, e := range opts.Envs {
				r.Envs[e.Name] = e.Value
			}
			for _, m := range opts.Mounts {
				r.Mounts = append(r.Mounts, mountReport{ContainerPath: m.ContainerPath, HostPath: m.HostPath, ReadOnly: m.ReadOnly})
			}
			for _, d := range opts.Devices {
				r.Devices = append(r.Devices, d.PathOnHost+":"+d.PathInContainer+":"+d.Permissions)
			}
			for _, a := range opts.Annotations {
				r.Annotations[a.Name] = a.Value
			}
			for _, d := range opts.CDIDevices {
				r.CDIDevices = append(r.CDIDevices, d.Name)
			}
		}
		r.DeviceIDs = map[string][]string{}
		for resource, devices := range n.k.devices(string(pod.UID), c.Name) {
			ids := sets.List(sets.KeySet(devices))
			r.DeviceIDs[resource] = ids
		}
		n.k.addContainer(pod, &c, containerID(pod, c.Name))
		st.report.Containers = append(st.report.Containers, r)
	}
	for _, c := range pod.Spec.InitContainers {
		run(c, true)
	}
	for _, c := range pod.Spec.Containers {
		run(c, false)
	}
	n.writeReport(st)
	if failed != "" {
		n.setStatus(ctx, pod, func(s *v1.PodStatus) {
			s.Phase = v1.PodPending
			s.Message = failed
		})
		return
	}
	n.setStatus(ctx, pod, func(s *v1.PodStatus) { running(pod, s) })
	if d := seconds(pod, runSecondsAnnotation, -1); d >= 0 {
		st.stopAt = time.Now().Add(d)
		n.queue.AddAfter(key, d)
	}
}

// stop is the pod's containers stopping (deleted) or exiting (finished): its devices are
// free from now on, as kubelet frees them, by the active pods.
func (n *node) stop(ctx context.Context, st *podState) {
	n.mu.Lock()
	st.stopped = true
	st.report.Stopped = true
	pod := st.pod
	n.mu.Unlock()
	n.k.updateAllocated()
	n.writeReport(st)
	if pod.DeletionTimestamp == nil {
		n.setStatus(ctx, pod, func(s *v1.PodStatus) {
			s.Phase = v1.PodSucceeded
			for i := range s.ContainerStatuses {
				s.ContainerStatuses[i].State = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed"}}
				s.ContainerStatuses[i].Ready = false
			}
		})
	}
}

// finishDeletion is kubelet's last word on a deleted pod whose containers have stopped.
func (n *node) finishDeletion(ctx context.Context, pod *v1.Pod) {
	zero := int64(0)
	uid := pod.UID
	err := n.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		n.logger.Error(err, "Deleting pod", "pod", klog.KObj(pod))
	}
}

// setStatus is kubelet's status manager writing a pod's status. Like it, it retries: the API
// server's Node authorizer learns that a pod is bound to this node from its own informer, a
// moment after this node's watch shows the pod, and until then refuses this node the pod
// ("no relationship found"). A pod that is gone or replaced is left alone.
func (n *node) setStatus(ctx context.Context, pod *v1.Pod, change func(*v1.PodStatus)) {
	var err error
	for delay := 50 * time.Millisecond; delay < 10*time.Second; delay *= 2 {
		var current *v1.Pod
		current, err = n.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && current.UID != pod.UID) {
			return
		}
		if err == nil {
			change(&current.Status)
			_, err = n.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, current, metav1.UpdateOptions{})
			if err == nil {
				return
			}
		}
		if !apierrors.IsConflict(err) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
		}
	}
	n.logger.Error(err, "Updating pod status", "pod", klog.KObj(pod))
}

func running(pod *v1.Pod, s *v1.PodStatus) {
	now := metav1.Now()
	s.Phase = v1.PodRunning
	s.HostIP = "127.0.0.1"
	s.PodIP = "127.0.0.1"
	s.StartTime = &now
	s.Conditions = []v1.PodCondition{
		{Type: v1.PodScheduled, Status: v1.ConditionTrue},
		{Type: v1.PodInitialized, Status: v1.ConditionTrue, LastTransitionTime: now},
		{Type: v1.ContainersReady, Status: v1.ConditionTrue, LastTransitionTime: now},
		{Type: v1.PodReady, Status: v1.ConditionTrue, LastTransitionTime: now},
	}
	s.InitContainerStatuses = nil
	for _, c := range pod.Spec.InitContainers {
		s.InitContainerStatuses = append(s.InitContainerStatuses, v1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, ContainerID: containerID(pod, c.Name),
			State: v1.ContainerState{Terminated: &v1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed"}},
		})
	}
	s.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		started := true
		s.ContainerStatuses = append(s.ContainerStatuses, v1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, ContainerID: containerID(pod, c.Name),
			Ready: true, Started: &started,
			State: v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: now}},
		})
	}
}

func containerID(pod *v1.Pod, name string) string {
	sum := sha256.Sum256([]byte(string(pod.UID) + "/" + name))
	return "containerd://" + hex.EncodeToString(sum[:])
}

func gracePeriod(pod *v1.Pod) int64 {
	if pod.DeletionGracePeriodSeconds != nil {
		return *pod.DeletionGracePeriodSeconds
	}
	return 30
}

// seconds reads one of the test annotations (at most `limit` seconds when limit >= 0).
func seconds(pod *v1.Pod, annotation string, limit int64) time.Duration {
	v, ok := pod.Annotations[annotation]
	if !ok {
		if limit < 0 {
			return -1
		}
		return 0
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 {
		return 0
	}
	if limit >= 0 && f > float64(limit) {
		f = float64(limit)
	}
	return time.Duration(f * float64(time.Second))
}

func (n *node) writeReport(st *podState) {
	n.mu.Lock()
	data, err := json.MarshalIndent(st.report, "", "  ")
	n.mu.Unlock()
	if err != nil {
		return
	}
	path := filepath.Join(n.reportDir, st.report.UID+".json")
	tmp := path + ".tmp"
	if os.WriteFile(tmp, data, 0o644) == nil {
		_ = os.Rename(tmp, path)
	}
}

// register creates the Node as kubelet does when it first starts.
func (n *node) register(ctx context.Context) error {
	obj := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{
		"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
	}}}
	_, err := n.client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if err := n.updateNodeStatus(ctx, true); err != nil {
		n.logger.Error(err, "Updating node status (the heartbeat retries)")
	}
	return nil
}

// heartbeat is kubelet's node status loop (capacity as the device manager reports it,
// posted when it changes) and its node Lease, renewed every 10 s.
func (n *node) heartbeat(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var renewed time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := n.updateNodeStatus(ctx, false); err != nil {
			n.logger.Error(err, "Updating node status")
		}
		if time.Since(renewed) >= 10*time.Second {
			if err := n.renewLease(ctx); err != nil {
				n.logger.Error(err, "Renewing node lease")
			} else {
				renewed = time.Now()
			}
		}
	}
}

func (n *node) updateNodeStatus(ctx context.Context, force bool) error {
	current, err := n.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	capacity, allocatable, removed := n.k.capacity()
	want := current.DeepCopy()
	base := v1.ResourceList{
		v1.ResourceCPU:              resource.MustParse("64"),
		v1.ResourceMemory:           resource.MustParse("512Gi"),
		v1.ResourcePods:             resource.MustParse("110"),
		v1.ResourceEphemeralStorage: resource.MustParse("1Ti"),
	}
	if want.Status.Capacity == nil {
		want.Status.Capacity = v1.ResourceList{}
	}
	if want.Status.Allocatable == nil {
		want.Status.Allocatable = v1.ResourceList{}
	}
	for k, v := range base {
		want.Status.Capacity[k] = v
		want.Status.Allocatable[k] = v
	}
	for k, v := range capacity {
		want.Status.Capacity[k] = v
	}
	for k, v := range allocatable {
		want.Status.Allocatable[k] = v
	}
	for _, r := range removed {
		delete(want.Status.Capacity, v1.ResourceName(r))
		delete(want.Status.Allocatable, v1.ResourceName(r))
	}
	changed := force || !equalResources(current.Status.Capacity, want.Status.Capacity) || !equalResources(current.Status.Allocatable, want.Status.Allocatable)
	if !changed {
		return nil
	}
	now := metav1.Now()
	// A strategic-merge patch of the status, as kubelet sends it: an update of the whole
	// object would carry the taints the node-lifecycle controller may have added since the
	// read, and NodeRestriction refuses a node changing its own taints.
	patch := map[string]any{"status": map[string]any{
		"capacity":    want.Status.Capacity,
		"allocatable": want.Status.Allocatable,
		"conditions": []v1.NodeCondition{{
			Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady", Message: "kubebox node is posting ready status",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		"addresses": []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "127.0.0.1"}, {Type: v1.NodeHostName, Address: n.name}},
		"nodeInfo": map[string]string{
			"kubeletVersion": kubernetesVersion(), "operatingSystem": "linux", "architecture": "amd64",
		},
	}}
	data, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	_, err = n.client.CoreV1().Nodes().PatchStatus(ctx, n.name, data)
	return err
}

func equalResources(a, b v1.ResourceList) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || v.Cmp(w) != 0 {
			return false
		}
	}
	return true
}

func (n *node) renewLease(ctx context.Context) error {
	leases := n.client.CoordinationV1().Leases(v1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	duration := int32(40)
	lease, err := leases.Get(ctx, n.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		owner, gerr := n.client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: n.name, Namespace: v1.NamespaceNodeLease, OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: n.name, UID: owner.UID,
			}}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &n.name, LeaseDurationSeconds: &duration, RenewTime: &now},
		}
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

// servePodResources serves kubelet's own pod-resources v1 server over the node's pods and
// the device manager (CPU, memory and DRA managers are not played: none assigned).
func (n *node) servePodResources(ctx context.Context, socket string) (func(), error) {
	_ = os.Remove(socket)
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, err
	}
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	server := grpc.NewServer()
	podresourcesv1.RegisterPodResourcesListerServer(server, n.k.podResources(ctx, n))
	go func() { _ = server.Serve(lis) }()
	return server.Stop, nil
}

// allPods is every pod the node knows, active or not.
func (n *node) allPods() []*v1.Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*v1.Pod
	for _, st := range n.pods {
		out = append(out, st.pod)
	}
	return out
}

func (n *node) podByName(namespace, name string) (*v1.Pod, bool) {
	for _, pod := range n.allPods() {
		if pod.Namespace == namespace && pod.Name == name {
			return pod, true
		}
	}
	return nil, false
}

// containerDevices is kubelet's conversion (pkg/kubelet/cm, unexported there).
func containerDevices(devs devicemanager.ResourceDeviceInstances) []*podresourcesv1.ContainerDevices {
	var out []*podresourcesv1.ContainerDevices
	for resourceName, resourceDevs := range devs {
		for id, dev := range resourceDevs {
			topo := dev.GetTopology()
			if topo == nil {
				out = append(out, &podresourcesv1.ContainerDevices{ResourceName: resourceName, DeviceIds: []string{id}})
				continue
			}
			for _, numaNode := range topo.GetNodes() {
				out = append(out, &podresourcesv1.ContainerDevices{
					ResourceName: resourceName, DeviceIds: []string{id},
					Topology: &podresourcesv1.TopologyInfo{Nodes: []*podresourcesv1.NUMANode{{ID: numaNode.GetID()}}},
				})
			}
		}
	}
	return out
}

// kubernetesVersion is the k8s.io/kubernetes release this binary was built from.
func kubernetesVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, m := range info.Deps {
			if m.Path == "k8s.io/kubernetes" {
				return m.Version
			}
		}
	}
	return "unknown"
}
